"""Storage lifecycle: past the retention time a batch's requests (params and results) are
deleted a chunk at a time and their space given back; the batch stays listable with its
counts. ``batchd db stats`` says what the database holds."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import anthropic
import asyncpg
import msgspec
import pytest

from batchd.domain import (
    BatchDialect,
    ClaimedRequest,
    DeleteOutcome,
    FileRole,
    Outcome,
    RequestState,
)
from batchd.schemas.openai import BatchFields
from batchd.schemas.results import succeeded_line
from batchd.store import NewFile, NewRequest, Purge, Store, open_store
from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.clock import ManualClock
from tests.support.cluster import run_batchd
from tests.support.invariants import count_mismatches, pg_count_mismatches
from tests.support.postgres import ephemeral_postgres
from tests.support.server import make_settings, serve_batchd

T0 = 1_800_000_000.0
DAY = 24 * 3600.0
SOAK_REQUESTS = 100  # a day's batch in the soak
SOAK_BOUND = 1.25  # the soak's file, past retention, against its size on the first such day


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/s.db"
    else:
        url = request.getfixturevalue("postgres").new_database_sync()
    yield url
    if request.param == "sqlite":
        assert count_mismatches(tmp_path / "s.db") == []
    else:
        assert asyncio.run(pg_count_mismatches(url)) == []


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, migrate=True)
    yield s
    await s.close()


def _requests(n: int, size: int = 100) -> list[NewRequest]:
    return [NewRequest(f"r{i}", "b", b"x" * size, RequestState.QUEUED) for i in range(n)]


async def _finish(store: Store, seq: int, now: float) -> None:
    def ok(request: ClaimedRequest) -> Outcome:
        return Outcome(request, RequestState.SUCCEEDED, succeeded_line(request.custom_id, {}))

    while claimed := (await store.claim("b", [seq], "w", 100, now + 30)).requests:
        await store.record("w", [ok(c) for c in claimed], now)


async def test_requests_past_retention_are_deleted_in_chunks_and_the_batch_stays(
    store: Store,
) -> None:
    old = await store.create_batch("msgbatch_old", "ws", T0, T0 + DAY, _requests(25))
    await _finish(store, old.seq, T0 + 1)
    unended = await store.create_batch("msgbatch_unended", "ws", T0, T0 + DAY, _requests(3))
    young = await store.create_batch("msgbatch_young", "ws", T0 + 2 * DAY, T0 + 3 * DAY, [])
    await _finish(store, young.seq, T0 + 2 * DAY)
    before = await store.stats()

    purge = await store.purge(T0 + DAY, T0 + 30 * DAY, chunk=10)

    assert (purge.requests, purge.batches) == (25, 1)
    assert await store.purge(T0 + DAY, T0 + 30 * DAY, chunk=10) == Purge(0, 0, 0)
    kept = await store.get_batch("ws", "msgbatch_old")
    assert kept is not None
    assert (kept.processing_status, kept.counts.succeeded, kept.counts.total) == ("ended", 25, 25)
    assert [r async for r in store.iter_results(old.seq, 100)] == []
    listed = await store.list_batches("ws", 10, None, None)
    assert listed is not None
    assert [b.id for b in listed[0]] == ["msgbatch_young", "msgbatch_unended", "msgbatch_old"]
    assert len([r async for page in store.iter_results(unended.seq, 100) for r in page]) == 3
    after = await store.stats()
    assert before.requests == {"succeeded": 25, "queued": 3}
    assert after.requests == {"queued": 3}
    assert after.batches == {"ended": 2, "in_progress": 1}
    assert (before.purged_batches, after.purged_batches) == (0, 1)


def _upload(file_id: str, expires_at: float) -> NewFile:
    return NewFile(file_id, "ws", "batch", "in.jsonl", T0, expires_at, FileRole.UPLOAD, 3, 1)


def _results_files(lifetime: float, most: float) -> list[NewFile]:
    """An OpenAI batch's output and error files: ``lifetime`` from its end, at most ``most``."""
    return [
        NewFile(f"file-{role}", "ws", "batch_output", "x", T0, most, role, None, 0, lifetime)
        for role in (FileRole.OUTPUT, FileRole.ERROR)
    ]


async def _openai_batch(store: Store, files: list[NewFile]) -> int:
    fields = BatchFields("/v1/chat/completions", "file-in", "24h", "file-output", "file-error")
    batch = await store.create_batch(
        "batch_a", "ws", T0, T0 + DAY, _requests(5),
        dialect=BatchDialect.OPENAI, dialect_fields=msgspec.json.encode(fields), files=files,
    )  # fmt: skip
    return batch.seq


async def test_files_past_their_expires_at_are_deleted_with_their_bytes(store: Store) -> None:
    await store.create_file(_upload("file-old", T0 + 10), [b"a\n", b"b\n"])
    await store.create_file(_upload("file-new", T0 + 100), [b"c\n"])
    listed = await store.list_files("ws", 10, None, purpose=None, newest_first=True, now=T0 + 10)

    purge = await store.purge(T0 - DAY, T0 + 10, chunk=10)

    assert listed is not None
    assert [f.id for f in listed[0]] == ["file-new"]  # expired: not listed before it is deleted
    assert purge.files == 1
    assert await store.get_file("ws", "file-old") is None
    kept = await store.get_file("ws", "file-new")
    assert kept is not None
    assert [c async for c in store.file_chunks(kept.seq)] == [b"c\n"]
    assert await store.purge(T0 - DAY, T0 + 10, chunk=10) == Purge(0, 0, 0)


async def test_a_batchs_files_live_from_its_end_and_take_its_requests_with_them(
    store: Store,
) -> None:
    seq = await _openai_batch(store, _results_files(3600, T0 + 29 * DAY))
    await _finish(store, seq, T0 + 100)
    output = await store.get_file("ws", "file-output")

    early = await store.purge(T0 - DAY, T0 + 3699, chunk=2)
    purge = await store.purge(T0 - DAY, T0 + 3700, chunk=2)

    assert output is not None
    assert (output.created_at, output.expires_at) == (T0 + 100, T0 + 100 + 3600)
    assert early == Purge(0, 0, 0)
    assert (purge.files, purge.requests, purge.batches) == (2, 5, 1)
    assert await store.get_file("ws", "file-error") is None
    assert [r async for r in store.iter_results(seq, 100)] == []


async def test_a_batchs_files_end_no_later_than_its_results(store: Store) -> None:
    seq = await _openai_batch(store, _results_files(30 * DAY, T0 + DAY))
    await _finish(store, seq, T0 + 100)
    output = await store.get_file("ws", "file-output")
    assert output is not None
    assert output.expires_at == T0 + DAY

    purge = await store.purge(T0, T0 + 100, chunk=10)  # retention shortened since: purged

    assert (purge.files, purge.requests, purge.batches) == (0, 5, 1)
    assert await store.get_file("ws", "file-output") is None  # its rows went with the batch


async def test_sqlite_gives_the_space_of_deleted_requests_back(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + DAY, _requests(500, 4000))
        await _finish(store, batch.seq, T0 + 1)
        full = await store.stats()
        purge = await store.purge(T0 + 1, T0 + 30 * DAY, chunk=100)
        empty = await store.stats()
    finally:
        await store.close()

    assert purge.requests == 500
    assert purge.reclaimed_bytes > 2_000_000
    assert full.used_bytes > 2_000_000
    assert empty.used_bytes < 200_000
    assert empty.free_bytes == 0
    assert path.stat().st_size < 200_000  # the checkpoint at close truncated the file


async def test_sqlite_gives_the_space_of_a_deleted_batch_back(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + DAY, _requests(500, 4000))
        await _finish(store, batch.seq, T0 + 1)
        full = await store.stats()
        assert await store.delete_batch("ws", "msgbatch_a") == DeleteOutcome.DELETED
        empty = await store.stats()
    finally:
        await store.close()

    assert full.used_bytes > 2_000_000
    assert empty.used_bytes < 200_000
    assert empty.free_bytes == 0


async def test_sqlite_gives_the_space_of_an_expired_upload_back(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/s.db")
    try:
        chunks = [os.urandom(4 * 1024 * 1024) for _ in range(3)]
        await store.create_file(_upload("file-big", T0 + 10), chunks)
        full = await store.stats()
        purge = await store.purge(T0 - DAY, T0 + 10, chunk=10)
        empty = await store.stats()
    finally:
        await store.close()

    assert purge.files == 1
    assert purge.reclaimed_bytes > 12_000_000  # the pages of its three 4 MiB chunks
    assert full.used_bytes > 12_000_000
    assert empty.used_bytes < 200_000
    assert empty.free_bytes == 0


def test_batchd_migrate_converts_a_file_made_without_incremental_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE filler (x BLOB)")  # as a file made before auto_vacuum
        db.commit()
    done = run_batchd("migrate", "--db", f"sqlite:///{path}")

    assert done.returncode == 0, done.stderr
    assert "converted the file to auto_vacuum = INCREMENTAL" in done.stdout
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
    again = run_batchd("migrate", "--db", f"sqlite:///{path}")
    assert "converted" not in again.stdout


def test_db_stats_prints_batches_requests_and_bytes(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(7)])
        wait_ended(client, batch.id)
    done = run_batchd("db", "stats", "--db", f"sqlite:///{tmp_path / 'batchd.db'}")

    assert done.returncode == 0, done.stderr
    lines = dict(line.split("\t") for line in done.stdout.splitlines())
    assert lines["batches"] == "1"
    assert lines["batches ended"] == "1"
    assert lines["requests succeeded"] == "7"
    assert int(lines["bytes used"]) > 0
    assert int(lines[f"file {tmp_path / 'batchd.db'}"]) > 0


def test_an_archived_batch_stays_listable_with_its_counts_once_its_requests_are_gone(
    start_server: StartServer, tmp_path: Path
) -> None:
    clock = ManualClock()
    server = start_server(clock=clock, purge_interval_seconds=0.05)
    db = tmp_path / "batchd.db"
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(5)])
        wait_ended(client, batch.id)
        clock.advance(29 * DAY)
        wait_until(lambda: _purged(db) == 1, "the batch's requests were not deleted")
        kept = client.messages.batches.retrieve(batch.id)
        listed = [b.id for b in client.messages.batches.list()]
        with pytest.raises(anthropic.BadRequestError, match="archived"):
            list(client.messages.batches.results(batch.id))

    assert kept.request_counts.succeeded == 5
    assert kept.archived_at is not None
    assert listed == [batch.id]


def _purged(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        [[n]] = conn.execute("SELECT count(*) FROM batches WHERE purged_at IS NOT NULL")
        return int(n)


class SoakStore(Protocol):
    @property
    def url(self) -> str: ...

    bound: float  # the size past retention, at most, against the size on the first such day

    def purged(self) -> int: ...  # batches whose requests are all deleted

    def size(self) -> int: ...  # bytes on disk

    def mismatches(self) -> list[str]: ...


def _has_purged(store: SoakStore, n: int) -> bool:
    return store.purged() == n


@dataclass
class SQLiteSoak:
    path: Path
    bound = SOAK_BOUND

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def purged(self) -> int:
        return _purged(self.path)

    def size(self) -> int:  # the file and its WAL
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def mismatches(self) -> list[str]:
        return count_mismatches(self.path)


@dataclass
class PostgresSoak:
    url: str
    # Deleted rows' space is reused once autovacuum (here every second) has passed, so the
    # table settles a little higher than SQLite's file, which gives pages back at once.
    bound = 1.5

    def _one(self, sql: str) -> int:
        async def read() -> int:
            conn = await asyncpg.connect(self.url)
            try:
                return int(await conn.fetchval(sql))
            finally:
                await conn.close()

        return asyncio.run(read())

    async def _vacuum(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("VACUUM requests")
        finally:
            await conn.close()

    def purged(self) -> int:
        return self._one("SELECT count(*) FROM batches WHERE purged_at IS NOT NULL")

    def size(self) -> int:  # the requests table with its TOAST table and indexes
        # Each compressed day, the space of the rows purged that day is made reusable as
        # autovacuum would by then: autovacuum runs on the wall clock, not the test's.
        asyncio.run(self._vacuum())
        return self._one("SELECT pg_total_relation_size('requests')")

    def mismatches(self) -> list[str]:
        return asyncio.run(pg_count_mismatches(self.url))


@pytest.fixture(params=["sqlite", "postgres"])
def soak_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SoakStore]:
    if request.param == "sqlite":
        yield SQLiteSoak(tmp_path / "batchd.db")
        return
    with ephemeral_postgres(settings={"autovacuum_naptime": "1"}) as server:
        yield PostgresSoak(server.new_database_sync())


def test_soak_many_batches_past_retention_keep_the_database_under_a_bound(
    soak_store: SoakStore, tmp_path: Path
) -> None:
    """A day a step on a compressed clock: each day a batch of SOAK_REQUESTS requests of
    about 2 KB runs; from day 30 on the purger deletes the batches of 29.5 days before. The
    database stops growing: it stays under its bound times its size on the day the first
    batch passed retention, however many days follow (``BATCHD_SOAK_DAYS``, 60;
    ``BATCHD_SOAK_REPORT=FILE`` writes the sizes by day there)."""
    days = int(os.environ.get("BATCHD_SOAK_DAYS", "60"))
    retention_days = 29
    clock = ManualClock()
    settings = make_settings(
        str(tmp_path / "batchd.db"),
        db=soak_store.url,
        purge_interval_seconds=0.05,
        batch_ttl_seconds=DAY,
        # half a day more, so that no batch is exactly on the edge when the test looks
        results_retention_seconds=(retention_days + 0.5) * DAY,
    )
    sizes: list[int] = []
    rng = random.Random(17)  # text that does not compress (PostgreSQL compresses large values)
    with (
        serve_batchd(settings, clock=clock) as server,
        anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client,
    ):
        for day in range(days):
            requests = [
                mock_request(f"d{day}-{i}", rng.randbytes(1000).hex())  # 2 KB, and its result
                for i in range(SOAK_REQUESTS)
            ]
            batch = client.messages.batches.create(requests=requests)
            wait_ended(client, batch.id)
            clock.advance(DAY)
            past = max(0, day + 1 - retention_days)  # batches now past retention
            caught_up = partial(_has_purged, soak_store, past)
            wait_until(caught_up, f"day {day}: purge behind", timeout=60)
            sizes.append(soak_store.size())
        listed = sum(1 for _ in client.messages.batches.list(limit=100))  # every page

    plateau = sizes[retention_days]
    figures = {d + 1: round(s / 2**20, 2) for d, s in enumerate(sizes)}
    if report := os.environ.get("BATCHD_SOAK_REPORT"):  # the figures of docs/reliability.md
        Path(report).write_text(json.dumps({"days": days, "MiB on disk by day": figures}))
    assert listed == days
    assert max(sizes[retention_days:]) <= soak_store.bound * plateau, figures
    if days > 2 * retention_days:  # without the purge it would have doubled by now
        assert sizes[-1] < 1.5 * plateau, figures
    assert soak_store.mismatches() == []
