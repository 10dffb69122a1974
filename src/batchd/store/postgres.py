"""The PostgreSQL driver: many API and worker processes on one database, through asyncpg.

Every transaction takes a connection from a pool. Claims lock rows with ``FOR UPDATE SKIP
LOCKED``; one sweeper at a time runs (an advisory lock). New requests are written with
binary COPY, and a large batch refreshes the planner's statistics once committed. New work
is announced with ``NOTIFY batchd_work``, heard by ``wait_for_work`` on a connection of its
own. Driver errors become ``StoreUnavailable`` here.

A server that hangs (stopped, or cut off without a reset) must not hang batchd: connecting
gives up after ``Timeouts.connect`` and each statement after ``Timeouts.statement``, on the
client (asyncpg's ``command_timeout``) and on the server (``statement_timeout``, so that a
statement given up on does not run on); a session idle in a transaction (its client hung)
is ended after ``IDLE_IN_TRANSACTION_SECONDS``, freeing its locks. A COPY is allowed more
time by its size, a migration any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from batchd.errors import BatchdError, StoreUnavailable
from batchd.store.queries import Dialect, load_queries
from batchd.store.store import NO_PARAMS, Params, Row, Timeouts, wait_for

log = logging.getLogger(__name__)

Q = load_queries("postgresql")
CHANNEL = "batchd_work"
ANALYZE_AFTER = 1000  # a batch this large refreshes the planner's statistics
IDLE_IN_TRANSACTION_SECONDS = 60.0  # a session whose client stopped mid-transaction ends
COPY_ROWS_PER_SECOND = 2000  # a COPY may take the statement timeout and this rate's time
MIGRATION_SECONDS = 24 * 3600.0  # a migration (an index on a large table) may take long
# InternalClientError: a pooled connection the server ended while it was idle can fail its
# next statement with "cannot switch to state ...; another operation is in progress".
# TimeoutError: the server did not answer within the timeouts.
_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


class _Queries:
    """Named queries on a pool (reads) or on one connection (a transaction)."""

    def __init__(
        self, conn: asyncpg.Pool[Record] | PoolConnectionProxy[Record], timeouts: Timeouts
    ) -> None:
        self._conn = conn
        self._timeouts = timeouts
        self.loaded = 0  # requests written by COPY

    async def _run(
        self, sql: str, args: list[Any], fetch: bool = True, seconds: float | None = None
    ) -> Any:
        """``seconds``: the client's wait for this statement, if not the statement timeout."""
        try:
            run = self._conn.fetch if fetch else self._conn.execute
            return await run(sql, *args, timeout=seconds)
        except _ERRORS as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    async def fetch(self, query: str, params: Params = NO_PARAMS, plain: bool = False) -> list[Row]:
        rows = await self._run(Q[query].sql, [params[n] for n in Q[query].params])
        return [tuple(r) for r in rows] if plain else list(rows)

    async def execute(self, query: str, params: Params = NO_PARAMS) -> int:
        args = [params[n] for n in Q[query].params]
        count = str(await self._run(Q[query].sql, args, fetch=False)).rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0  # the tag's count, as in ``UPDATE 3``

    async def fetch_each(self, query: str, rows: Sequence[Params], shared: Params) -> list[Row]:
        """One statement for all the rows: each per-row parameter goes in as an array."""
        args = [shared[n] if n in shared else [r[n] for r in rows] for n in Q[query].params]
        return list(await self._run(Q[query].sql, args))

    async def bulk_insert(self, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        assert isinstance(self._conn, PoolConnectionProxy)  # in a transaction
        allowed = self._timeouts.statement + len(rows) / COPY_ROWS_PER_SECOND
        await self._run(f"SET LOCAL statement_timeout = {_ms(allowed)}", [], fetch=False)
        try:
            await self._conn.copy_records_to_table(
                table, records=rows, columns=columns, timeout=allowed
            )
        except _ERRORS as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        await self._run(f"SET LOCAL statement_timeout = {_ms(self._timeouts.statement)}", [], False)
        self.loaded += len(rows)

    async def notify(self) -> None:
        await self._run("SELECT pg_notify($1, '')", [CHANNEL])

    async def run_script(self, sql: str) -> None:
        await self._run("SET LOCAL statement_timeout = 0", [], fetch=False)
        await self._run(sql, [], fetch=False, seconds=MIGRATION_SECONDS)

    async def fetch_unbounded(self, query: str) -> list[Row]:
        await self._run("SET LOCAL statement_timeout = 0", [], fetch=False)
        rows = await self._run(Q[query].sql, [], seconds=MIGRATION_SECONDS)
        await self._run(f"SET LOCAL statement_timeout = {_ms(self._timeouts.statement)}", [], False)
        return list(rows)


class PostgresDriver:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, pool: asyncpg.Pool[Record], timeouts: Timeouts) -> None:
        self._url, self._pool, self._timeouts = url, pool, timeouts
        self.fetch = _Queries(pool, timeouts).fetch
        self._work = asyncio.Event()
        self._listener: asyncpg.Connection[Record] | None = None

    @classmethod
    async def open(cls, url: str, timeouts: Timeouts) -> PostgresDriver:
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=8, **cls._connect_options(timeouts)
            )
        except _ERRORS as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        return cls(url, pool, timeouts)

    @staticmethod
    def _connect_options(timeouts: Timeouts) -> dict[str, Any]:
        return {
            "timeout": timeouts.connect,
            "command_timeout": timeouts.statement,
            "server_settings": {
                "statement_timeout": _ms(timeouts.statement),
                "idle_in_transaction_session_timeout": _ms(IDLE_IN_TRANSACTION_SECONDS),
            },
        }

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*_ERRORS):
                await self._listener.close()
        await self._pool.close()

    @asynccontextmanager
    async def transaction(
        self, *, durable: bool = True, bulk: bool = False
    ) -> AsyncIterator[_Queries]:
        """One transaction on a pooled connection; driver failures become StoreUnavailable."""
        del durable, bulk  # every commit waits for its WAL flush; the server checkpoints
        try:
            wait = self._timeouts.connect + self._timeouts.statement  # for a free connection
            async with self._pool.acquire(timeout=wait) as conn, conn.transaction():
                tx = _Queries(conn, self._timeouts)
                yield tx
        except _ERRORS as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        if tx.loaded >= ANALYZE_AFTER:
            try:  # fresh statistics after a bulk load, so that claims keep using the index
                await self._pool.execute("ANALYZE requests")
            except _ERRORS as exc:  # only the plans suffer
                log.warning("ANALYZE after a bulk load failed: %s", exc)

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait for a NOTIFY from any process (or this one's own work) for up to ``seconds``."""
        if self._listener is None or self._listener.is_closed():  # first use, or lost
            try:
                listener = await asyncpg.connect(self._url, **self._connect_options(self._timeouts))
                await listener.add_listener(CHANNEL, self._notified)
            except _ERRORS as exc:  # polling still finds the work
                log.warning("cannot listen for new work: %s", exc)
            else:
                self._listener = listener
                self._work.set()  # what was announced while nobody listened
        return await wait_for(self._work, seconds)

    def _notified(self, *_: object) -> None:
        self._work.set()

    async def reclaim_space(self, pages: int) -> int:
        """Nothing to do: autovacuum makes the space of deleted rows reusable."""
        del pages
        return 0

    async def enable_reclaim(self) -> bool:
        return False

    def files(self) -> dict[str, int]:
        return {}

    async def backup(self, path: str) -> None:
        raise BatchdError(
            f"cannot back up a PostgreSQL database to {path}: use pg_dump (see the README)"
        )
