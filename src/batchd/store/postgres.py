"""The PostgreSQL driver: many API and worker processes on one database, through asyncpg.

Every transaction takes a connection from a pool. Claims lock rows with ``FOR UPDATE SKIP
LOCKED``; one sweeper at a time runs (an advisory lock). New requests are written with
binary COPY, and a large batch refreshes the planner's statistics once committed. New work
is announced with ``NOTIFY batchd_work``, heard by ``wait_for_work`` on a connection of its
own. Driver errors become ``StoreUnavailable`` here.
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

from batchd.errors import StoreUnavailable
from batchd.store.queries import Dialect, load_queries
from batchd.store.store import NO_PARAMS, Params, Row, wait_for

log = logging.getLogger(__name__)

Q = load_queries("postgresql")
CHANNEL = "batchd_work"
ANALYZE_AFTER = 1000  # a batch this large refreshes the planner's statistics
# InternalClientError: a pooled connection the server ended while it was idle can fail its
# next statement with "cannot switch to state ...; another operation is in progress".
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class _Queries:
    """Named queries on a pool (reads) or on one connection (a transaction)."""

    def __init__(self, conn: asyncpg.Pool[Record] | PoolConnectionProxy[Record]) -> None:
        self._conn = conn
        self.loaded = 0  # requests written by COPY

    async def _run(self, sql: str, args: list[Any], fetch: bool = True) -> Any:
        try:
            return await (self._conn.fetch if fetch else self._conn.execute)(sql, *args)
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
        await self._conn.copy_records_to_table(table, records=rows, columns=columns)
        self.loaded += len(rows)

    async def notify(self) -> None:
        await self._run("SELECT pg_notify($1, '')", [CHANNEL])

    async def run_script(self, sql: str) -> None:
        await self._run(sql, [], fetch=False)


class PostgresDriver:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, pool: asyncpg.Pool[Record]) -> None:
        self._url, self._pool = url, pool
        self.fetch = _Queries(pool).fetch
        self._work = asyncio.Event()
        self._listener: asyncpg.Connection[Record] | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresDriver:
        try:
            return cls(url, await asyncpg.create_pool(url, min_size=1, max_size=8))
        except _ERRORS as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*_ERRORS):
                await self._listener.close()
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[_Queries]:
        """One transaction on a pooled connection; driver failures become StoreUnavailable."""
        del durable  # every commit waits for its WAL flush
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                tx = _Queries(conn)
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
                listener = await asyncpg.connect(self._url)
                await listener.add_listener(CHANNEL, self._notified)
            except _ERRORS as exc:  # polling still finds the work
                log.warning("cannot listen for new work: %s", exc)
            else:
                self._listener = listener
                self._work.set()  # what was announced while nobody listened
        return await wait_for(self._work, seconds)

    def _notified(self, *_: object) -> None:
        self._work.set()
