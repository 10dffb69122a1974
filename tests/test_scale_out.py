"""Scale-out on PostgreSQL: one API process and three `batchd worker` processes share a
database; SIGKILL one worker mid-batch and nothing is lost or run more than its lost leases."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import asyncpg
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import wait_ended
from tests.support.cluster import Cluster, run_batchd
from tests.support.invariants import pg_count_mismatches
from tests.support.postgres import PostgresServer
from tests.support.upstream import FakeUpstream, serve_upstream

N = 10_000


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.02) as running:
        yield running


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer, upstream: FakeUpstream) -> Iterator[Cluster]:
    db = postgres.new_database_sync(migrated=False)
    migrated = run_batchd("migrate", "--db", db)
    assert migrated.returncode == 0, migrated.stderr
    running = Cluster(tmp_path, db, upstream.url)
    try:
        yield running
    finally:
        running.stop()


def requests(n: int) -> list[Request]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": "claude-scale",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"scale prompt {i}"}],
            },
        }
        for i in range(n)
    ]


async def _attempts(db: str) -> Counter[str]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT custom_id, attempts FROM requests")
    finally:
        await conn.close()
    return Counter({r["custom_id"]: r["attempts"] for r in rows})


def test_three_workers_survive_a_sigkill(cluster: Cluster, upstream: FakeUpstream) -> None:
    cluster.start_api()
    cluster.start_workers(3)
    with anthropic.Anthropic(base_url=cluster.url, api_key="sk-test", max_retries=0) as client:
        batch = client.messages.batches.create(requests=requests(N))
        deadline = time.monotonic() + 60
        while (seen := client.messages.batches.retrieve(batch.id)).request_counts.succeeded < 3000:
            assert time.monotonic() < deadline, seen.request_counts
            time.sleep(0.05)
        cluster.kill_worker(0)
        latencies = []
        for _ in range(25):  # the API answers while the other workers are busy
            start = time.perf_counter()
            busy = client.messages.batches.retrieve(batch.id)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.02)
        assert busy.processing_status == "in_progress"
        ended = wait_ended(client, batch.id, timeout=60)
        results = Counter(r.custom_id for r in client.messages.batches.results(batch.id))

    assert statistics.median(latencies) < 0.1, latencies
    assert ended.request_counts.succeeded == N
    assert results == {f"req-{i}": 1 for i in range(N)}
    attempts = asyncio.run(_attempts(cluster.db))
    calls = upstream.all_calls()
    lost = {f"req-{i}": attempts[f"req-{i}"] - 1 for i in range(N)}  # leases lost per request
    assert sum(lost.values()) > 0  # the killed worker held leases
    too_many = {
        i: (calls[f"scale prompt {i}"], lost[f"req-{i}"])
        for i in range(N)
        if not 1 <= calls[f"scale prompt {i}"] <= 1 + lost[f"req-{i}"]
    }
    assert too_many == {}
    assert asyncio.run(pg_count_mismatches(cluster.db)) == []


def test_workers_refuse_a_database_that_was_not_migrated(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    db = postgres.new_database_sync(migrated=False)
    for command in (["worker"], ["serve", "--no-engine", "--port", "0"]):
        refused = run_batchd(*command, "--db", db)
        assert refused.returncode != 0
        assert "run `batchd migrate" in refused.stderr, refused.stderr
