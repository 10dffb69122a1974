"""The PostgreSQL driver: many API and worker processes on one database, through asyncpg.

Every transaction takes a connection from a pool. Claims lock rows with ``FOR UPDATE SKIP
LOCKED``, so that workers never wait for each other; one sweeper at a time runs (an
advisory lock). New requests are written with binary COPY, and a large batch refreshes the
planner's statistics after it commits, so that claims keep using the queue index.

New batches and returned leases are announced with ``NOTIFY batchd_work``; a worker
waiting in ``wait_for_work`` listens on a connection of its own. Driver errors become
``StoreUnavailable`` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from batchd.errors import StoreUnavailable
from batchd.store.base import NO_PARAMS, Params, Row, wait_for
from batchd.store.queries import Dialect, Query, load_queries

log = logging.getLogger(__name__)

Q = load_queries("postgresql")
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

Record = asyncpg.Record
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = PoolConnectionProxy[Record]


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"database unavailable: {exc}")


def _args(query: Query, params: Params) -> list[Any]:
    return [params[name] for name in query.params]


class _Tx:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.loaded = 0  # requests written by COPY

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]:
        return list(await self._conn.fetch(Q[query].sql, *_args(Q[query], params)))

    async def execute(self, query: str, params: Params = NO_PARAMS) -> int:
        status = await self._conn.execute(Q[query].sql, *_args(Q[query], params))
        count = status.rsplit(" ", 1)[-1]  # the row count of a tag such as ``UPDATE 3``
        return int(count) if count.isdigit() else 0

    async def fetch_each(self, query: str, rows: Sequence[Params], shared: Params) -> list[Row]:
        """One statement for all the rows: each per-row parameter goes in as an array."""
        args = [shared[n] if n in shared else [r[n] for r in rows] for n in Q[query].params]
        return list(await self._conn.fetch(Q[query].sql, *args))

    async def bulk_insert(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        await self._conn.copy_records_to_table(table, records=rows, columns=columns)
        self.loaded += len(rows)

    async def notify(self) -> None:
        await self._conn.execute("SELECT pg_notify($1, '')", CHANNEL)

    async def run_script(self, sql: str) -> None:
        await self._conn.execute(sql)


class PostgresDriver:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, pool: asyncpg.Pool[Record]) -> None:
        self._url = url
        self._pool = pool
        self._work = asyncio.Event()
        self._listener: asyncpg.Connection[Record] | None = None

    @classmethod
    async def open(cls, url: str) -> PostgresDriver:
        try:
            return cls(url, await asyncpg.create_pool(url, min_size=1, max_size=8))
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._listener.close()
        await self._pool.close()

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]:
        try:
            return list(await self._pool.fetch(Q[query].sql, *_args(Q[query], params)))
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def fetch_tuples(self, query: str, params: Params) -> list[tuple[Any, ...]]:
        try:
            rows = await self._pool.fetch(Q[query].sql, *_args(Q[query], params))
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc
        return [tuple(r) for r in rows]

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[_Tx]:
        """One transaction on a pooled connection; driver failures become StoreUnavailable."""
        del durable  # every commit waits for its WAL flush
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                tx = _Tx(conn)
                yield tx
        except _DRIVER_ERRORS as exc:
            raise _unavailable(exc) from exc
        if tx.loaded >= ANALYZE_AFTER:
            await self._analyze()

    async def _analyze(self) -> None:
        """Fresh statistics after a bulk load, so that claims keep using the queue index."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("ANALYZE requests")
        except _DRIVER_ERRORS as exc:  # only the plans suffer
            log.warning("ANALYZE after a bulk load failed: %s", exc)

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait for a NOTIFY from any process (or this one's own work) for up to ``seconds``."""
        await self._listen()
        return await wait_for(self._work, seconds)

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
