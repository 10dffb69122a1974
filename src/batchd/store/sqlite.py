"""The SQLite store: one file in WAL mode, through aiosqlite.

One connection writes, under an asyncio lock so that each transaction is whole; a
second, read-only connection serves retrieve, list and results while writes go on.
Every driver error is wrapped into ``StoreUnavailable`` here.

When the file cannot be written (locked by another process, disk full, I/O errors), a
write waits at most ``BUSY_SECONDS`` for the writes before it in this process and
``BUSY_SECONDS`` for SQLite's lock. Once a write has failed on the file, the writes after
it wait for no lock (busy_timeout 0) until one of them works again, so that the API
answers 503 at once while the outage lasts, and the first write after it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite

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

Q = load_queries("sqlite.sql")
MIGRATIONS = load_migrations()
SCHEMA_VERSION = MIGRATIONS[-1][0]
BUSY_SECONDS = 5.0  # the longest a write waits for a lock held elsewhere


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory, ``sqlite:////abs`` not."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"unsupported database URL {url!r}: expected sqlite:///PATH")
    return Path(url[len(prefix) :])


def _create_private(path: Path) -> None:
    """Create a new database file readable by its owner only (0600, whatever the umask).

    SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so they are
    private too. An existing file keeps the mode its owner gave it.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


async def _connect(path: Path, *, readonly: bool) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = aiosqlite.Row
    await conn.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
    await conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        await conn.execute("PRAGMA query_only = ON")
    else:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
    return conn


class SQLiteStore:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        # One statement at a time on the reader: while a statement is open, the connection
        # keeps its snapshot, and a read started meanwhile would miss newer commits
        # (a batch just created answered 404 under concurrent reads).
        self._read_lock = asyncio.Lock()
        self._work = asyncio.Event()  # set when this process queues work
        self._degraded = False  # a write failed on the file, and none has worked since
        self._busy_ms = int(BUSY_SECONDS * 1000)  # the writer's busy_timeout now

    @classmethod
    async def open(cls, url: str, *, migrate: bool) -> SQLiteStore:
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        writer = await _connect(path, readonly=False)
        try:
            await _migrate(writer, apply=migrate)
            reader = await _connect(path, readonly=True)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def _write(self, *, durable: bool = True) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; driver failures become StoreUnavailable.

        A durable transaction is on disk when it commits (the WAL is synced). Bookkeeping
        whose loss in a power cut only means a request runs again (claims, lease renewals,
        sweeps) skips that sync; the next durable commit syncs its pages as well.
        """
        async with self._exclusive():
            try:
                await self._begin(durable=durable)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            try:
                yield self._writer
                await self._writer.execute("COMMIT")
                self._degraded = False
            except BaseException as exc:
                await asyncio.shield(self._rollback())
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc) from exc
                raise
            finally:
                if not durable:
                    with contextlib.suppress(sqlite3.Error):
                        await asyncio.shield(self._writer.execute("PRAGMA synchronous = FULL"))

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """This process's one writer, waited for at most BUSY_SECONDS."""
        try:
            async with asyncio.timeout(BUSY_SECONDS):
                await self._lock.acquire()
        except TimeoutError:
            raise StoreUnavailable("database busy: earlier writes are still waiting") from None
        try:
            yield
        finally:
            self._lock.release()

    async def _begin(self, *, durable: bool) -> None:
        if self._writer.in_transaction:  # a rollback failed with the disk earlier
            await self._writer.execute("ROLLBACK")
        # After a write failed on the file, wait for no lock until a write works again.
        busy_ms = 0 if self._degraded else int(BUSY_SECONDS * 1000)
        if busy_ms != self._busy_ms:
            await self._writer.execute(f"PRAGMA busy_timeout = {busy_ms}")
            self._busy_ms = busy_ms
        if not durable:
            await self._writer.execute("PRAGMA synchronous = NORMAL")
        await self._writer.execute("BEGIN IMMEDIATE")

    def _failed(self, exc: sqlite3.Error) -> StoreUnavailable:
        """A write failed; when the file itself failed (locked, full, read-only, I/O), the
        writes after it stop waiting for SQLite's lock until one of them works."""
        if isinstance(exc, sqlite3.OperationalError):
            self._degraded = True
        return StoreUnavailable(f"database unavailable: {exc}")

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
            await self._writer.execute("ROLLBACK")

    async def _read(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        try:
            async with self._read_lock, self._reader.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

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
        async with self._write() as db:
            cursor = await db.execute(
                Q["insert_batch"],
                {
                    "id": batch_id,
                    "workspace": workspace,
                    "total": len(requests),
                    "succeeded": states[RequestState.SUCCEEDED],
                    "errored": states[RequestState.ERRORED],
                    "created_at": created_at,
                    "expires_at": expires_at,
                },
            )
            row = await cursor.fetchone()
            assert row is not None
            seq = row[0]
            await db.executemany(
                Q["insert_request"],
                [(seq, r.custom_id, r.backend, r.params, r.state, r.result) for r in requests],
            )
            await db.execute(Q["finalize_batch"], {"seq": seq, "now": created_at})
            batch = await self._batch_by_seq(db, seq)
        self._work.set()
        return batch

    @staticmethod
    async def _batch_by_seq(db: aiosqlite.Connection, seq: int) -> Batch:
        async with db.execute(Q["get_batch_by_seq"], {"seq": seq}) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return Batch.from_row(row)

    async def get_batch(self, workspace: str, batch_id: str) -> Batch | None:
        rows = await self._read(Q["get_batch"], {"id": batch_id, "workspace": workspace})
        return Batch.from_row(rows[0]) if rows else None

    async def list_batches(
        self, workspace: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool] | None:
        params: dict[str, Any] = {"workspace": workspace, "limit": limit + 1}
        cursor_id = before_id or after_id
        if cursor_id is not None:
            anchor = await self.get_batch(workspace, cursor_id)
            if anchor is None:
                return None
            params["seq"] = anchor.seq
        query = "list_newer" if before_id else "list_older" if after_id else "list_newest"
        batches = [Batch.from_row(r) for r in await self._read(Q[query], params)]
        has_more = len(batches) > limit
        batches = batches[:limit]
        if before_id:
            batches.reverse()
        return batches, has_more

    async def cancel_batch(
        self, workspace: str, batch_id: str, now: float
    ) -> tuple[Batch, CancelOutcome] | None:
        async with self._write() as db:
            async with db.execute(Q["get_batch"], {"id": batch_id, "workspace": workspace}) as c:
                row = await c.fetchone()
            if row is None:
                return None
            seq = row["seq"]
            cursor = await db.execute(Q["start_cancel"], {"seq": seq, "now": now})
            if cursor.rowcount == 0:
                batch = Batch.from_row(row)
                status = batch.processing_status.value
                outcome = (
                    CancelOutcome.ALREADY_ENDED
                    if status == "ended"
                    else CancelOutcome.ALREADY_CANCELING
                )
                return batch, outcome
            await self._settle_queued(db, seq, RequestState.CANCELED)
            return await self._batch_by_seq(db, seq), CancelOutcome.CANCELED

    @staticmethod
    async def _settle_queued(db: aiosqlite.Connection, seq: int, state: RequestState) -> None:
        cursor = await db.execute(Q["settle_queued"], {"seq": seq, "state": state})
        counter = "add_canceled" if state is RequestState.CANCELED else "add_expired"
        await db.execute(Q[counter], {"seq": seq, "n": cursor.rowcount})

    async def delete_batch(self, workspace: str, batch_id: str) -> DeleteOutcome:
        async with self._write() as db:
            async with db.execute(Q["get_batch"], {"id": batch_id, "workspace": workspace}) as c:
                row = await c.fetchone()
            if row is None:
                return DeleteOutcome.NOT_FOUND
            if row["processing_status"] != "ended":
                return DeleteOutcome.NOT_ENDED
            await db.execute(Q["delete_requests"], {"seq": row["seq"]})
            await db.execute(Q["delete_batch"], {"seq": row["seq"]})
            return DeleteOutcome.DELETED

    async def iter_results(
        self, batch_seq: int, page_size: int
    ) -> AsyncIterator[list[ResultRecord]]:
        after = 0
        while True:
            params = {"seq": batch_seq, "after": after, "limit": page_size}
            try:
                async with (
                    self._read_lock,
                    self._reader.execute(Q["results_page"], params) as cursor,
                ):
                    cursor.row_factory = None  # plain tuples: several times cheaper than Rows
                    rows = cast(list[ResultRecord], await cursor.fetchall())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"database unavailable: {exc}") from exc
            if not rows:
                return
            after = rows[-1][0]
            yield rows
            if len(rows) < page_size:
                return

    async def errored_results(self, batch_seq: int, limit: int) -> list[ResultRow]:
        rows = await self._read(Q["errored_page"], {"seq": batch_seq, "limit": limit})
        return [ResultRow(r["custom_id"], RequestState(r["state"]), r["result"]) for r in rows]

    # -- operators -----------------------------------------------------------------------

    async def request_figures(self) -> RequestFigures:
        queued = {r["backend"]: r["n"] for r in await self._read(Q["queued_by_backend"])}
        [running] = await self._read(Q["running_count"])
        [totals] = await self._read(Q["final_totals"])
        return RequestFigures.from_rows(queued, int(running[0]), totals)

    # -- engine --------------------------------------------------------------------------

    async def claimable_batches(self, now: float) -> list[int]:
        return [r[0] for r in await self._read(Q["claimable_batches"], {"now": now})]

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
        params: dict[str, Any] = {"backend": backend, "owner": owner, "until": lease_until}
        async with self._write(durable=False) as db:
            for seq in batch_seqs:
                want = min(share or limit, limit - len(claimed))
                if want <= 0:
                    break
                params.update(seq=seq, limit=want)
                async with db.execute(Q["claim"], params) as cursor:
                    rows = list(await cursor.fetchall())
                if len(rows) < want:
                    exhausted.append(seq)
                claimed.extend(
                    ClaimedRequest(r["id"], seq, r["custom_id"], r["params"], r["attempts"])
                    for r in rows
                )
        return Claim(claimed, exhausted)

    async def renew_leases(self, owner: str, lease_until: float, ids: Sequence[int]) -> int:
        params = {"owner": owner, "until": lease_until, "ids": json.dumps(list(ids))}
        async with self._write(durable=False) as db:
            cursor = await db.execute(Q["renew_leases"], params)
            return cursor.rowcount

    async def record(self, owner: str, outcomes: Sequence[Outcome], now: float) -> Recorded:
        if not outcomes:
            return Recorded(0, 0)
        tallies: dict[int, Counter[RequestState]] = {}
        for outcome in outcomes:
            tallies.setdefault(outcome.request.batch_seq, Counter())[outcome.state] += 1
        rows = [(o.state, o.line, o.request.id, owner, o.request.attempt) for o in outcomes]
        ended = 0
        async with self._write() as db:
            cursor = await db.executemany(Q["record_result"], rows)
            applied = cursor.rowcount
            for seq, tally in tallies.items():
                if applied == len(outcomes):
                    await db.execute(
                        Q["add_results"],
                        {
                            "seq": seq,
                            "succeeded": tally[RequestState.SUCCEEDED],
                            "errored": tally[RequestState.ERRORED],
                        },
                    )
                else:  # some writes were fenced off: count from the rows themselves
                    await db.execute(Q["recount"], {"seq": seq})
                cursor = await db.execute(Q["finalize_batch"], {"seq": seq, "now": now})
                ended += cursor.rowcount
        return Recorded(applied, ended)

    async def sweep(self, now: float) -> Sweep:
        async with self._write(durable=False) as db:
            requeued = await self._requeue(db, Q["requeue_lost"], {"now": now})
            async with db.execute(Q["expiring_batches"], {"now": now}) as cursor:
                expiring = [r[0] for r in await cursor.fetchall()]
            for seq in expiring:
                await self._settle_queued(db, seq, RequestState.EXPIRED)
            cursor = await db.execute(Q["finalize_all"], {"now": now})
            return Sweep(requeued=requeued, expired=len(expiring), ended=cursor.rowcount)

    async def release_leases(self, owner: str) -> int:
        async with self._write(durable=False) as db:
            return await self._requeue(db, Q["release_leases"], {"owner": owner})

    async def _requeue(self, db: aiosqlite.Connection, sql: str, params: dict[str, Any]) -> int:
        """Return running requests to the queue; a canceling batch's are canceled."""
        async with db.execute(sql, params) as cursor:
            seqs = Counter(r[0] for r in await cursor.fetchall())
        for seq in seqs:
            async with db.execute(Q["canceling_batch"], {"seq": seq}) as cursor:
                if await cursor.fetchone() is not None:
                    await self._settle_queued(db, seq, RequestState.CANCELED)
        if seqs:
            self._work.set()
        return seqs.total()

    async def wait_for_work(self, seconds: float) -> bool:
        """SQLite has no notifications: only this process's own work is seen at once."""
        try:
            async with asyncio.timeout(seconds):
                await self._work.wait()
        except TimeoutError:
            return False
        self._work.clear()
        return True

    # -- API keys ------------------------------------------------------------------------

    async def create_key(self, key: ApiKey, key_hash: str) -> None:
        async with self._write() as db:
            await db.execute(
                Q["insert_key"],
                {
                    "id": key.id,
                    "name": key.name,
                    "workspace": key.workspace,
                    "key_hash": key_hash,
                    "created_at": key.created_at,
                    "is_operator": int(key.operator),
                },
            )

    async def list_keys(self) -> list[ApiKey]:
        return [ApiKey.from_row(r) for r in await self._read(Q["list_keys"])]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        async with self._write() as db:
            cursor = await db.execute(Q["revoke_key"], {"id": key_id, "now": now})
            return cursor.rowcount == 1

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        rows = await self._read(Q["find_key"], {"key_hash": key_hash})
        return (ApiKey.from_row(rows[0]), rows[0]["key_hash"]) if rows else None

    async def count_active_keys(self) -> int:
        rows = await self._read(Q["count_active_keys"])
        return int(rows[0][0])


async def _migrate(db: aiosqlite.Connection, *, apply: bool) -> None:
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    async with db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations") as cursor:
        row = await cursor.fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise SchemaMismatch(
            f"the database schema is version {current}, newer than this batchd "
            f"(version {SCHEMA_VERSION}); upgrade batchd"
        )
    pending = [(v, sql) for v, sql in MIGRATIONS if v > current]
    if pending and not apply:
        raise SchemaMismatch(
            f"the database schema is version {current}, older than this batchd expects "
            f"({SCHEMA_VERSION}); run `batchd migrate`"
        )
    for version, sql in pending:
        await db.executescript(
            f"BEGIN IMMEDIATE;\n{sql}\n"
            f"INSERT INTO schema_migrations VALUES ({version}, {time.time()});\nCOMMIT;"
        )
