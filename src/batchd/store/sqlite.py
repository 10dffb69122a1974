"""The SQLite driver: one file in WAL mode, each connection on a thread of its own.

One connection writes, under an asyncio lock so that each transaction is whole; a read-only
one serves the reads meanwhile, each read whole in one call on its thread (a statement left
open would keep its snapshot and hide newer commits from the reads after it). A write waits
at most ``BUSY_SECONDS`` for the writes before it in this process and as long for SQLite's
lock. Once a write has failed on the file (locked elsewhere, disk full, I/O), the writes
after it wait for no lock until one works again: the API answers 503 at once while the
outage lasts. A transaction that is not durable commits without syncing the WAL; the next
durable commit syncs its pages too. A bulk transaction (an upload, a batch's requests) answers
once its WAL is synced: a connection of its own then copies the WAL into the database file,
which a commit past ``AUTOCHECKPOINT_PAGES`` would otherwise do before it answers. Driver
errors become ``StoreUnavailable`` here.

Space: a new file has ``auto_vacuum = INCREMENTAL``, so that the pages freed by deleting
requests past retention are given back to the file system (``reclaim_space``) instead of
staying in the file; a file made before that is converted once by ``batchd migrate``
(a VACUUM). The WAL is cut back to ``WAL_LIMIT_BYTES`` after each checkpoint.
``backup`` copies the live file with SQLite's backup API, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from batchd.errors import StoreUnavailable
from batchd.store.queries import Dialect, load_queries
from batchd.store.store import NO_PARAMS, Params, Row, wait_for

log = logging.getLogger(__name__)

Q = load_queries("sqlite")
BUSY_SECONDS = 5.0  # the longest a write waits for a lock held elsewhere
BUSY_MS = int(BUSY_SECONDS * 1000)
WAL_LIMIT_BYTES = 32 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default: a commit past this many WAL pages copies them
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL
T = TypeVar("T")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    pragmas = ["query_only = ON"]
    if not readonly:  # auto_vacuum first: it only takes on a file that has no table yet
        pragmas = ["auto_vacuum = INCREMENTAL", "journal_mode = WAL", "synchronous = FULL"]
        pragmas.append(f"journal_size_limit = {WAL_LIMIT_BYTES}")
        pragmas.append(f"wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
    for pragma in pragmas:
        db.execute(f"PRAGMA {pragma}")
    return db


def _bind(params: Params) -> Params:  # a list goes in as a JSON array, read with json_each
    return {k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()}


class _Connection:
    """A connection on its own thread, each method one call there. The reader wraps driver
    errors itself; the writer is the transaction (``Tx``), whose end wraps them."""

    def __init__(self, thread: ThreadPoolExecutor, db: sqlite3.Connection, wrap: bool) -> None:
        self._thread, self.db, self._wrap = thread, db, wrap
        self.notified = False

    @classmethod
    async def open(cls, path: Path, *, readonly: bool) -> _Connection:
        thread = ThreadPoolExecutor(1, thread_name_prefix="batchd-sqlite")
        loop = asyncio.get_running_loop()
        return cls(thread, await loop.run_in_executor(thread, _connect, path, readonly), readonly)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            if not self._wrap:
                raise
            raise StoreUnavailable(f"database unavailable: {exc}") from exc

    async def close(self) -> None:
        await self.call(self.db.close)
        self._thread.shutdown(wait=False)

    def _all(self, sql: str, params: Params, plain: bool) -> list[Row]:
        cursor = self.db.cursor()
        if plain:
            cursor.row_factory = None  # plain tuples: several times cheaper than Rows
        return cursor.execute(sql, _bind(params)).fetchall()

    async def fetch(self, query: str, params: Params = NO_PARAMS, plain: bool = False) -> list[Row]:
        return await self.call(self._all, Q[query].sql, params, plain)

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

    async def bulk_insert(self, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        await self.call(self.db.executemany, sql, rows)

    async def notify(self) -> None:
        self.notified = True  # this process's waiting workers, once the transaction commits

    async def fetch_unbounded(self, query: str) -> list[Row]:
        return await self.fetch(query)  # SQLite's locks wait for the busy timeout

    async def run_script(self, sql: str) -> None:
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                await self.call(self.db.execute, statement)
                statement = ""


def _space_mode(db: sqlite3.Connection) -> list[Any]:
    """(auto_vacuum mode, tables in the file)."""
    sql = "SELECT auto_vacuum, (SELECT count(*) FROM sqlite_master) FROM pragma_auto_vacuum()"
    return db.execute(sql).fetchall()


def _reclaim(db: sqlite3.Connection, pages: int) -> int:
    """Give up to ``pages`` free pages back; the bytes given back. (``executescript`` steps
    the pragma to its end: ``execute`` frees one page per call.)"""
    [[before, size]] = db.execute("SELECT * FROM pragma_freelist_count(), pragma_page_size()")
    if not before:
        return 0
    db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
    [[after]] = db.execute("PRAGMA freelist_count").fetchall()
    return int(before - after) * int(size)


def _backup(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` in one step: one read transaction, so the copy is one
    consistent state (in WAL mode the writers go on meanwhile). Written beside the target
    and renamed, so that ``target`` is never a partial copy."""
    if target.exists() and target.samefile(source):
        raise ValueError("the backup must not overwrite the database itself")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # as the database
    with contextlib.closing(sqlite3.connect(source)) as src:
        src.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        with contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
    os.replace(partial, target)


class SQLiteDriver:
    dialect: Dialect = "sqlite"

    def __init__(
        self, path: Path, writer: _Connection, reader: _Connection, checkpointer: _Connection
    ) -> None:
        self.path = path
        self._writer, self._reader, self._checkpointer = writer, reader, checkpointer
        self._checkpoint: asyncio.Task[None] | None = None  # copying the WAL (_copy_wal)
        self._copy_again = False  # a bulk write committed since the copy began
        self.fetch = reader.fetch
        self._lock = asyncio.Lock()
        self._work = asyncio.Event()  # set when this process queues work
        self._degraded = False  # a write failed on the file, and none has worked since

    @classmethod
    async def open(cls, url: str) -> SQLiteDriver:
        # sqlite:///rel/path.db is relative to the working directory, sqlite:////abs not
        if not url.startswith("sqlite:///") or url == "sqlite:///":
            raise ValueError(f"unsupported database URL {url!r}: expected sqlite:///PATH")
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # A new file is its owner's only (0600 whatever the umask), and so its WAL and SHM.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        writer = await _Connection.open(path, readonly=False)
        try:
            [[mode, tables]] = await writer.call(_space_mode, writer.db)
            if mode != INCREMENTAL and tables:
                log.warning(
                    "%s was made without auto_vacuum = INCREMENTAL: the space of deleted "
                    "requests stays in the file; run `batchd migrate` once, with the server "
                    "stopped, to convert it",
                    path,
                )
            reader = await _Connection.open(path, readonly=True)
            return cls(path, writer, reader, await _Connection.open(path, readonly=True))
        except BaseException:
            await writer.close()
            raise

    async def close(self) -> None:
        await self.wal_copied()
        await self._checkpointer.close()
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def transaction(
        self, *, durable: bool = True, bulk: bool = False
    ) -> AsyncIterator[_Connection]:
        """One write transaction, after the writes before it in this process (waited for at
        most BUSY_SECONDS); driver failures become StoreUnavailable. A ``bulk`` one answers
        once its WAL is synced: its pages are copied into the database file afterwards, off
        the writer (the next transactions need not wait for that copy)."""
        try:
            await asyncio.wait_for(self._lock.acquire(), BUSY_SECONDS)
        except TimeoutError:
            raise StoreUnavailable("database busy: earlier writes are still waiting") from None
        tx = self._writer
        try:
            await tx.call(self._begin, durable)
            yield tx
            await tx.call(self._end, "COMMIT", bulk)
            self._degraded = False
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
                await asyncio.shield(tx.call(self._end, "ROLLBACK"))
            if not isinstance(exc, sqlite3.Error):
                raise
            # When the file itself failed (locked, full, read-only, I/O), the writes after
            # this one stop waiting for SQLite's lock until one of them works.
            self._degraded |= isinstance(exc, sqlite3.OperationalError)
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        finally:
            self._lock.release()
        if tx.notified:
            self._work.set()
        if bulk:
            self._copy_again = True
            if self._checkpoint is None:
                self._checkpoint = asyncio.create_task(self._copy_wal())

    async def wal_copied(self) -> None:
        """Once the WAL copy that a bulk write started, if any, has ended."""
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)

    async def _copy_wal(self) -> None:
        """Copy the WAL's pages into the database file (what the commit of a bulk write left
        to do), on a connection of its own: the writer and the readers go on meanwhile."""
        db = self._checkpointer.db
        try:
            while self._copy_again:  # and again for a bulk write committed meanwhile
                self._copy_again = False
                await self._checkpointer.call(db.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        except StoreUnavailable as exc:  # the next commit past AUTOCHECKPOINT_PAGES tries again
            log.warning("copying the WAL into %s failed: %s", self.path, exc)
        finally:
            self._checkpoint = None

    def _begin(self, durable: bool) -> None:
        db, self._writer.notified = self._writer.db, False
        if db.in_transaction:  # a rollback failed with the disk earlier
            db.execute("ROLLBACK")
        # After a write failed on the file, wait for no lock until a write works again.
        db.execute(f"PRAGMA busy_timeout = {0 if self._degraded else BUSY_MS}")
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")

    def _end(self, verb: str, bulk: bool = False) -> None:
        db = self._writer.db
        try:
            if bulk:  # the commit syncs the WAL only; _copy_wal copies it
                db.execute("PRAGMA wal_autocheckpoint = 0")
            db.execute(verb)
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA synchronous = FULL")
            if bulk:  # the next commits copy the WAL as they did
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")

    async def wait_for_work(self, seconds: float) -> bool:
        """SQLite has no notifications: only this process's own work is seen at once."""
        return await wait_for(self._work, seconds)

    @asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """The writer, between this process's transactions."""
        try:
            await asyncio.wait_for(self._lock.acquire(), BUSY_SECONDS)
        except TimeoutError:
            raise StoreUnavailable("database busy: earlier writes are still waiting") from None
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        finally:
            self._lock.release()

    async def reclaim_space(self, pages: int) -> int:
        async with self._exclusive():
            return await self._writer.call(_reclaim, self._writer.db, pages)

    async def enable_reclaim(self) -> bool:
        """Convert a file made without ``auto_vacuum = INCREMENTAL`` (a one-time VACUUM,
        which rewrites the whole file under the write lock); True when it did."""
        async with self._exclusive():
            db = self._writer.db
            [[mode]] = await self._writer.call(lambda: db.execute("PRAGMA auto_vacuum").fetchall())
            if mode == INCREMENTAL:
                return False
            await self._writer.call(db.execute, "PRAGMA auto_vacuum = INCREMENTAL")
            await self._writer.call(db.execute, "VACUUM")
            return True

    def files(self) -> dict[str, int]:
        sizes = {}
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                sizes[str(path)] = path.stat().st_size
        return sizes

    async def backup(self, path: str) -> None:
        target = Path(path)
        thread = ThreadPoolExecutor(1, thread_name_prefix="batchd-backup")
        try:
            await asyncio.get_running_loop().run_in_executor(thread, _backup, self.path, target)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"backup failed: {exc}") from exc
        finally:
            thread.shutdown(wait=False)
