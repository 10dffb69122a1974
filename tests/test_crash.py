"""Crash safety: SIGKILL a real `batchd serve` process mid-batch and restart it on the same file."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import wait_ended
from tests.support.cluster import Cluster
from tests.support.invariants import count_mismatches
from tests.support.upstream import FakeUpstream, serve_upstream

MODEL = "claude-crash"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.02) as running:
        yield running


@pytest.fixture
def batchd(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Cluster]:
    """`batchd serve` with its engine, on a SQLite file: ``kill_api`` is SIGKILL."""
    db_path = tmp_path / "b.db"
    cluster = Cluster(
        tmp_path, f"sqlite:///{db_path}", upstream.url, env={"BATCHD_POLL_INTERVAL_SECONDS": "0.1"}
    )
    try:
        yield cluster
    finally:
        cluster.stop()
    assert count_mismatches(db_path) == []


@pytest.fixture
def client(batchd: Cluster) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=batchd.url, api_key="sk-test", max_retries=0) as c:
        yield c


def requests(n: int) -> list[Request]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"crash prompt {i}"}],
            },
        }
        for i in range(n)
    ]


def test_sigkill_mid_batch_loses_and_duplicates_nothing(
    batchd: Cluster, client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    batchd.start_api(engine=True)
    batch = client.messages.batches.create(requests=requests(2000))
    deadline = time.monotonic() + 30
    while (seen := client.messages.batches.retrieve(batch.id)).request_counts.succeeded < 650:
        assert time.monotonic() < deadline, seen.request_counts
        time.sleep(0.02)
    batchd.kill_api()
    assert seen.request_counts.succeeded < 2000  # the kill came mid-batch

    batchd.start_api(engine=True)
    ended = wait_ended(client, batch.id, timeout=40)

    counts = ended.request_counts
    assert counts.succeeded == 2000
    assert counts.processing + counts.errored + counts.canceled + counts.expired == 0
    results = Counter(
        (r.custom_id, r.result.type) for r in client.messages.batches.results(batch.id)
    )
    assert results == {(f"req-{i}", "succeeded"): 1 for i in range(2000)}
    calls = upstream.all_calls()
    assert set(calls) == {f"crash prompt {i}" for i in range(2000)}
    assert max(calls.values()) <= 2  # at-least-once execution, at most one rerun each
    assert calls.total() > 2000  # what was in flight at the kill ran again


def test_batch_created_just_before_sigkill_survives(
    batchd: Cluster, client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.latency = 0.5  # nothing can finish before the kill
    batchd.start_api(engine=True)
    batch = client.messages.batches.create(requests=requests(20))
    batchd.kill_api()

    upstream.latency = 0.02
    batchd.start_api(engine=True)
    after = client.messages.batches.retrieve(batch.id)
    assert after.id == batch.id
    assert sum(after.request_counts.model_dump().values()) == 20
    ended = wait_ended(client, batch.id, timeout=30)
    assert ended.request_counts.succeeded == 20
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {f"req-{i}": "succeeded" for i in range(20)}


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_sigkill_during_create_stores_all_or_nothing(
    batchd: Cluster, client: anthropic.Anthropic, delay: float
) -> None:
    batchd.start_api(engine=True)
    big = requests(30_000)
    killer = threading.Timer(delay, batchd.kill_api)
    killer.start()
    try:
        created = client.messages.batches.create(requests=big)
    except anthropic.APIConnectionError:
        created = None  # the kill came first; the SDK never heard back
    killer.join()
    batchd.kill_api()

    batchd.start_api(engine=True)
    stored = list(client.messages.batches.list())
    if created is not None:
        assert [b.id for b in stored] == [created.id]
    assert len(stored) <= 1
    for batch in stored:  # whatever was stored is whole
        assert sum(batch.request_counts.model_dump().values()) == 30_000
