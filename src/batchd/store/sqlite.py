"""The SQLite driver: one file in WAL mode, each connection on a thread of its own.

One connection writes, under an asyncio lock so that each transaction is whole; a second,
read-only connection serves the reads while writes go on. Each read runs to its end in one
call on the reader's thread, so reads are serialised there: a statement left open would
keep its snapshot, and a read started meanwhile would miss newer commits. Every driver
error is wrapped into ``StoreUnavailable`` here.

When the file cannot be written (locked by another process, disk full, I/O errors), a
write waits at most ``BUSY_SECONDS`` for the writes before it in this process and
``BUSY_SECONDS`` for SQLite's lock. Once a write has failed on the file, the writes after
it wait for no lock (busy_timeout 0) until one of them works again, so that the API
answers 503 at once while the outage lasts, and the first write after it succeeds.

A durable transaction is on disk when it commits (synchronous = FULL syncs the WAL).
Bookkeeping whose loss in a power cut only means a request runs again (claims, lease
renewals, sweeps) skips that sync; the next durable commit syncs its pages as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from batchd.errors import StoreUnavailable
from batchd.store.base import NO_PARAMS, Params, Row, wait_for
from batchd.store.queries import Dialect, load_queries

Q = load_queries("sqlite")
BUSY_SECONDS = 5.0  # the longest a write waits for a lock held elsewhere
BUSY_MS = int(BUSY_SECONDS * 1000)
T = TypeVar("T")


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/path.db`` is relative to the working directory, ``sqlite:////abs`` not."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"unsupported database URL {url!r}: expected sqlite:///PATH")
    return Path(url[len(prefix) :])


def _bind(params: Params) -> Params:
    """A list parameter goes in as a JSON array (the SQL reads it with json_each)."""
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()}


class _Connection:
    """A sqlite3 connection used on one thread of its own; each method is one hop there.

    As a writer it is also the driver's transaction (``Tx``)."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="batchd-sqlite")
        self.db: sqlite3.Connection
        self.notified = False

    @classmethod
    async def open(cls, path: Path, *, readonly: bool) -> _Connection:
        conn = cls()
        conn.db = await conn.call(partial(sqlite3.connect, path, isolation_level=None))
        await conn.call(conn._setup, readonly)
        return conn

    def _setup(self, readonly: bool) -> None:
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        self.db.execute("PRAGMA foreign_keys = ON")
        if readonly:
            self.db.execute("PRAGMA query_only = ON")
        else:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        with contextlib.suppress(AttributeError):  # never opened
            await self.call(self.db.close)
        self._thread.shutdown(wait=False)

    def _all(self, sql: str, params: Params, plain: bool = False) -> list[Any]:
        cursor = self.db.cursor()
        if plain:
            cursor.row_factory = None  # plain tuples: several times cheaper than Rows
        return cursor.execute(sql, _bind(params)).fetchall()

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]:
        return await self.call(self._all, Q[query].sql, params)

    async def fetch_tuples(self, query: str, params: Params) -> list[tuple[Any, ...]]:
        return await self.call(self._all, Q[query].sql, params, True)

    async def execute(self, query: str, params: Params = NO_PARAMS) -> int:
        return await self.call(lambda: self.db.execute(Q[query].sql, _bind(params)).rowcount)

    def _each(self, sql: str, rows: Sequence[Params], shared: Params) -> list[Row]:
        params, out = dict(shared), []
        for row in rows:
            params.update(row)
            out += self.db.execute(sql, params).fetchall()
        return out

    async def fetch_each(self, query: str, rows: Sequence[Params], shared: Params) -> list[Row]:
        return await self.call(self._each, Q[query].sql, rows, shared)

    async def bulk_insert(
        self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        marks = ", ".join("?" * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        await self.call(self.db.executemany, sql, rows)

    async def notify(self) -> None:
        self.notified = True  # this process's waiting workers, once the transaction commits

    async def run_script(self, sql: str) -> None:
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                await self.call(self.db.execute, statement)
                statement = ""


class SQLiteDriver:
    dialect: Dialect = "sqlite"

    def __init__(self, writer: _Connection, reader: _Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()  # set when this process queues work
        self._degraded = False  # a write failed on the file, and none has worked since
        self._busy_ms = BUSY_MS  # the writer's busy_timeout now

    @classmethod
    async def open(cls, url: str) -> SQLiteDriver:
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _Connection.open(path, readonly=False)
        try:
            reader = await _Connection.open(path, readonly=True)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]:
        try:
            return await self._reader.fetch(query, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    async def fetch_tuples(self, query: str, params: Params) -> list[tuple[Any, ...]]:
        try:
            return await self._reader.fetch_tuples(query, params)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[_Connection]:
        """One write transaction; driver failures become StoreUnavailable."""
        tx = self._writer
        async with self._exclusive():
            try:
                await tx.call(self._begin, durable)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            tx.notified = False
            try:
                yield tx
                await tx.call(self._end, "COMMIT", durable)
                self._degraded = False
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
                    await asyncio.shield(tx.call(self._end, "ROLLBACK", durable))
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc) from exc
                raise
        if tx.notified:
            self._work.set()

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

    def _begin(self, durable: bool) -> None:
        db = self._writer.db
        if db.in_transaction:  # a rollback failed with the disk earlier
            db.execute("ROLLBACK")
        # After a write failed on the file, wait for no lock until a write works again.
        busy_ms = 0 if self._degraded else BUSY_MS
        if busy_ms != self._busy_ms:
            db.execute(f"PRAGMA busy_timeout = {busy_ms}")
            self._busy_ms = busy_ms
        if not durable:
            db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN IMMEDIATE")

    def _end(self, verb: str, durable: bool) -> None:
        try:
            self._writer.db.execute(verb)
        finally:
            if not durable:
                with contextlib.suppress(sqlite3.Error):
                    self._writer.db.execute("PRAGMA synchronous = FULL")

    def _failed(self, exc: sqlite3.Error) -> StoreUnavailable:
        """A write failed; when the file itself failed (locked, full, read-only, I/O), the
        writes after it stop waiting for SQLite's lock until one of them works."""
        if isinstance(exc, sqlite3.OperationalError):
            self._degraded = True
        return StoreUnavailable(f"database unavailable: {exc}")

    async def wait_for_work(self, seconds: float) -> bool:
        """SQLite has no notifications: only this process's own work is seen at once."""
        return await wait_for(self._work, seconds)
