"""The PostgreSQL store: many API and worker processes on one database, through asyncpg.

Every call takes a connection from a pool for one short transaction. Claims lock rows
with ``FOR UPDATE SKIP LOCKED``, so that workers never wait for each other, and start
after a per-(backend, batch) watermark kept in this process: without it every claim
would walk the dead index entries of all the rows claimed before (O(n^2) over a batch).
Rows below the watermark (requeued, or skipped while another claim held them) are
picked up by a second look from the start when the watermark finds too few. Results are
fenced on (owner, attempt) and counted from the rows actually written; one sweeper at a
time runs (an advisory lock), and every counter moves in the statement that moves its
rows, so concurrent sweeps, cancels and records never count a request twice.

New batches and returned leases are announced with ``NOTIFY batchd_work``; a worker
waiting in ``wait_for_work`` listens on a connection of its own. Driver errors become
``StoreUnavailable`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from batchd.domain import ApiKey, Batch, ClaimedRequest, Outcome, RequestState
from batchd.errors import StoreUnavailable
from batchd.store.base import (
    CancelOutcome,
    Claim,
    DeleteOutcome,
    NewRequest,
    Recorded,
    RequestFigures,
    ResultRecord,
    ResultRow,
    SchemaMismatch,
    Sweep,
)
from batchd.store.queries import load_migrations, load_queries

log = logging.getLogger(__name__)

Q = load_queries("postgres.sql")
MIGRATIONS = load_migrations("postgresql")
SCHEMA_VERSION = MIGRATIONS[-1][0]
CHANNEL = "batchd_work"
ANALYZE_AFTER = 1000  # a batch this large refreshes the planner's statistics
# InternalClientError: a pooled connection the server ended while it was idle can fail its
# next statement with "cannot switch to state ...; another operation is in progress".
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
_REQUEST_COLUMNS = ["batch_seq", "custom_id", "backend", "params", "state", "result"]

Record = asyncpg.Record
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = PoolConnectionProxy[Record]


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"database unavailable: {exc}")


def _rowcount(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    def __init__(self, url: str, pool: asyncpg.Pool[Record]) -> None:
        self._url = url
        self._pool = pool
        self._marks: dict[tuple[str, int], int] = {}  # claim watermarks: (backend, seq) -> id
        self._work = asyncio.Event()
        self._listener: asyncpg.Connection[Record] | None = None

    @classmethod
    async def open(cls, url: str, *, migrate: bool) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=8)
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc
        try:
            async with pool.acquire() as conn:
                await _migrate(conn, apply=migrate)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, _DRIVER_ERRORS):
                raise _unavailable(exc) from exc
            raise
        return cls(url, pool)

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._listener.close()
        await self._pool.close()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Connection]:
        """One transaction on a pooled connection; driver failures become StoreUnavailable."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Record]:
        try:
            return await self._pool.fetch(sql, *args)
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc

    # -- batches -------------------------------------------------------------------------

    async def create_batch(
        self,
        batch_id: str,
        workspace: str,
        created_at: float,
        expires_at: float,
        requests: Sequence[NewRequest],
    ) -> Batch:
        states = Counter(r.state for r in requests)
        async with self._tx() as db:
            seq = await db.fetchval(
                Q["insert_batch"],
                batch_id,
                workspace,
                len(requests),
                states[RequestState.SUCCEEDED],
                states[RequestState.ERRORED],
                created_at,
                expires_at,
            )
            await db.copy_records_to_table(
                "requests",
                records=[
                    (seq, r.custom_id, r.backend, r.params, str(r.state), r.result)
                    for r in requests
                ],
                columns=_REQUEST_COLUMNS,
            )
            await db.execute(Q["finalize_batch"], seq, created_at)
            row = await db.fetchrow(Q["get_batch_by_seq"], seq)
            await db.execute(Q["notify_work"])
        assert row is not None
        if len(requests) >= ANALYZE_AFTER:
            await self._analyze()
        return Batch.from_row(row)

    async def _analyze(self) -> None:
        """Fresh statistics after a bulk load, so that claims keep using the queue index."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("ANALYZE requests")
        except _DRIVER_ERRORS as exc:  # only the plans suffer
            log.warning("ANALYZE after a bulk load failed: %s", exc)

    async def get_batch(self, workspace: str, batch_id: str) -> Batch | None:
        rows = await self._fetch(Q["get_batch"], batch_id, workspace)
        return Batch.from_row(rows[0]) if rows else None

    async def list_batches(
        self, workspace: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool] | None:
        cursor_id = before_id or after_id
        if cursor_id is None:
            rows = await self._fetch(Q["list_newest"], workspace, limit + 1)
        else:
            anchor = await self.get_batch(workspace, cursor_id)
            if anchor is None:
                return None
            query = "list_newer" if before_id else "list_older"
            rows = await self._fetch(Q[query], workspace, limit + 1, anchor.seq)
        batches = [Batch.from_row(r) for r in rows]
        has_more = len(batches) > limit
        batches = batches[:limit]
        if before_id:
            batches.reverse()
        return batches, has_more

    async def cancel_batch(
        self, workspace: str, batch_id: str, now: float
    ) -> tuple[Batch, CancelOutcome] | None:
        async with self._tx() as db:
            row = await db.fetchrow(Q["lock_batch"], batch_id, workspace)
            if row is None:
                return None
            seq = row["seq"]
            if _rowcount(await db.execute(Q["start_cancel"], seq, now)) == 0:
                batch = Batch.from_row(row)
                ended = batch.processing_status.value == "ended"
                return batch, (
                    CancelOutcome.ALREADY_ENDED if ended else CancelOutcome.ALREADY_CANCELING
                )
            await db.execute(Q["settle_canceled"], seq)
            after = await db.fetchrow(Q["get_batch_by_seq"], seq)
        assert after is not None
        return Batch.from_row(after), CancelOutcome.CANCELED

    async def delete_batch(self, workspace: str, batch_id: str) -> DeleteOutcome:
        async with self._tx() as db:
            row = await db.fetchrow(Q["lock_batch"], batch_id, workspace)
            if row is None:
                return DeleteOutcome.NOT_FOUND
            if row["processing_status"] != "ended":
                return DeleteOutcome.NOT_ENDED
            await db.execute(Q["delete_requests"], row["seq"])
            await db.execute(Q["delete_batch"], row["seq"])
            return DeleteOutcome.DELETED

    async def iter_results(
        self, batch_seq: int, page_size: int
    ) -> AsyncIterator[list[ResultRecord]]:
        after = 0
        while True:
            rows = await self._fetch(Q["results_page"], batch_seq, after, page_size)
            if not rows:
                return
            after = rows[-1]["id"]
            yield [(r[0], r[1], r[2], r[3]) for r in rows]
            if len(rows) < page_size:
                return

    async def errored_results(self, batch_seq: int, limit: int) -> list[ResultRow]:
        rows = await self._fetch(Q["errored_page"], batch_seq, limit)
        return [ResultRow(r["custom_id"], RequestState(r["state"]), r["result"]) for r in rows]

    # -- operators -----------------------------------------------------------------------

    async def request_figures(self) -> RequestFigures:
        queued = {r["backend"]: r["n"] for r in await self._fetch(Q["queued_by_backend"])}
        [running] = await self._fetch(Q["running_count"])
        [totals] = await self._fetch(Q["final_totals"])
        return RequestFigures.from_rows(queued, int(running[0]), totals)

    # -- engine --------------------------------------------------------------------------

    async def claimable_batches(self, now: float) -> list[int]:
        return [r[0] for r in await self._fetch(Q["claimable_batches"], now)]

    async def claim(
        self,
        backend: str,
        batch_seqs: Sequence[int],
        owner: str,
        limit: int,
        lease_until: float,
        *,
        share: int | None = None,
    ) -> Claim:
        claimed: list[ClaimedRequest] = []
        exhausted: list[int] = []
        async with self._tx() as db:
            for seq in batch_seqs:
                want = min(share or limit, limit - len(claimed))
                if want <= 0:
                    break
                rows = await self._claim_batch(db, backend, seq, owner, lease_until, want)
                if len(rows) < want:
                    exhausted.append(seq)
                claimed.extend(
                    ClaimedRequest(r["id"], seq, r["custom_id"], r["params"], r["attempts"])
                    for r in rows
                )
        if len(self._marks) > 10_000:  # forget the marks of batches no longer asked for
            asked = {(backend, s) for s in batch_seqs}
            self._marks = {k: v for k, v in self._marks.items() if k in asked}
        return Claim(claimed, exhausted)

    async def _claim_batch(
        self, db: Connection, backend: str, seq: int, owner: str, until: float, want: int
    ) -> list[Record]:
        """Claim from the watermark on; when that finds too few, look again from the start."""
        mark = self._marks.get((backend, seq), 0)
        rows = list(await db.fetch(Q["claim"], backend, seq, owner, until, mark, want))
        if len(rows) < want and mark > 0:
            rows += await db.fetch(Q["claim"], backend, seq, owner, until, 0, want - len(rows))
        rows.sort(key=lambda r: r["id"])
        if rows:
            self._marks[(backend, seq)] = max(mark, rows[-1]["id"])
        return rows

    async def renew_leases(self, owner: str, lease_until: float, ids: Sequence[int]) -> int:
        async with self._tx() as db:
            return _rowcount(await db.execute(Q["renew_leases"], owner, lease_until, list(ids)))

    async def record(self, owner: str, outcomes: Sequence[Outcome], now: float) -> Recorded:
        if not outcomes:
            return Recorded(0, 0)
        ordered = sorted(outcomes, key=lambda o: o.request.id)  # lock rows in one order
        args = (
            [o.request.id for o in ordered],
            [str(o.state) for o in ordered],
            [o.line for o in ordered],
            [o.request.attempt for o in ordered],
        )
        applied = ended = 0
        async with self._tx() as db:
            tallies = await db.fetch(Q["record_results"], owner, *args)
            for tally in tallies:  # in batch order, so that writers lock batches alike
                seq = tally["batch_seq"]
                await db.execute(Q["add_results"], seq, tally["succeeded"], tally["errored"])
                ended += _rowcount(await db.execute(Q["finalize_batch"], seq, now))
                applied += tally["succeeded"] + tally["errored"]
        return Recorded(applied, ended)

    async def sweep(self, now: float) -> Sweep:
        async with self._tx() as db:
            if not await db.fetchval(Q["sweep_lock"]):
                return Sweep(requeued=0, expired=0, ended=0)  # another worker is sweeping
            requeued = await self._requeue(db, Q["requeue_lost"], now)
            expiring = [r[0] for r in await db.fetch(Q["expiring_batches"], now)]
            for seq in expiring:
                await db.execute(Q["settle_expired"], seq)
            ended = _rowcount(await db.execute(Q["finalize_all"], now))
            return Sweep(requeued=requeued, expired=len(expiring), ended=ended)

    async def release_leases(self, owner: str) -> int:
        async with self._tx() as db:
            return await self._requeue(db, Q["release_leases"], owner)

    async def _requeue(self, db: Connection, sql: str, arg: str | float) -> int:
        """Return running requests to the queue; a canceling batch's are canceled."""
        seqs = Counter(r[0] for r in await db.fetch(sql, arg))
        if not seqs:
            return 0
        for row in await db.fetch(Q["canceling_batches"], sorted(seqs)):
            await db.execute(Q["settle_canceled"], row[0])
        await db.execute(Q["notify_work"])
        return seqs.total()

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait for a NOTIFY from any process (or this one's own work) for up to ``seconds``."""
        await self._listen()
        try:
            async with asyncio.timeout(seconds):
                await self._work.wait()
        except TimeoutError:
            return False
        self._work.clear()
        return True

    async def _listen(self) -> None:
        """Open the listening connection on first use, and again after it was lost."""
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            listener = await asyncpg.connect(self._url)
            await listener.add_listener(CHANNEL, self._notified)
        except _DRIVER_ERRORS as exc:  # polling still finds the work
            log.warning("cannot listen for new work: %s", exc)
            return
        self._listener = listener
        self._work.set()  # what was announced while nobody listened

    def _notified(self, *_: object) -> None:
        self._work.set()

    # -- API keys ------------------------------------------------------------------------

    async def create_key(self, key: ApiKey, key_hash: str) -> None:
        async with self._tx() as db:
            await db.execute(
                Q["insert_key"],
                key.id,
                key.name,
                key.workspace,
                key_hash,
                key.created_at,
                int(key.operator),
            )

    async def list_keys(self) -> list[ApiKey]:
        return [ApiKey.from_row(r) for r in await self._fetch(Q["list_keys"])]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        async with self._tx() as db:
            return _rowcount(await db.execute(Q["revoke_key"], key_id, now)) == 1

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        rows = await self._fetch(Q["find_key"], key_hash)
        return (ApiKey.from_row(rows[0]), rows[0]["key_hash"]) if rows else None

    async def count_active_keys(self) -> int:
        [row] = await self._fetch(Q["count_active_keys"])
        return int(row[0])


async def _migrate(db: Connection, *, apply: bool) -> None:
    """Apply pending migrations in one transaction, one migrating process at a time."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(hashtext('batchd.migrate'))")
        current = 0
        if await db.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            current = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database schema is version {current}, newer than this batchd "
                f"(version {SCHEMA_VERSION}); upgrade batchd"
            )
        pending = [(v, sql) for v, sql in MIGRATIONS if v > current]
        if pending and not apply:
            raise SchemaMismatch(
                f"the database schema is version {current}, older than this batchd expects "
                f"({SCHEMA_VERSION}); run `batchd migrate --db URL` first"
            )
        if not pending:
            return
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for version, sql in pending:
            await db.execute(sql)
            await db.execute("INSERT INTO schema_migrations VALUES ($1, $2)", version, time.time())
