"""A request whose run kills its worker every time ends ``errored`` after
``max_attempts`` claims, instead of being claimed (and killing a worker) forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import wait_until
from tests.faults.conftest import Database, Tally
from tests.support.cluster import Cluster
from tests.support.upstream import FakeUpstream, Fault, serve_upstream, slow

MAX_ATTEMPTS = 2
HANG = 60.0
POISON = "poison"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.02) as running:
        yield running


@pytest.fixture
def cluster(tmp_path: Path, database: Database, upstream: FakeUpstream) -> Iterator[Cluster]:
    """The API without an engine and one worker: every upstream call comes from the worker."""
    env = {"BATCHD_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "BATCHD_LEASE_SECONDS": "1"}
    running = Cluster(tmp_path, database.url, upstream.url, env=env)
    try:
        running.start_api()
        running.start_workers(1)
        yield running
    finally:
        running.stop()


def test_a_request_that_kills_its_worker_every_time_ends_errored(
    cluster: Cluster, upstream: FakeUpstream, tally: Tally
) -> None:
    def kill_later() -> None:
        """Kill the worker once its 20 neighbours are recorded: only the poison runs again."""
        with anthropic.Anthropic(base_url=cluster.url, api_key="sk-test") as watcher:

            def neighbours_recorded() -> bool:
                batches = watcher.messages.batches.list(limit=1).data
                return bool(batches) and batches[0].request_counts.succeeded == 20

            wait_until(neighbours_recorded, "the poison's neighbours were not recorded")
        cluster.kill_worker(0)

    def kill_the_caller(key: str, _attempt: int) -> Fault | None:
        if key != POISON:
            return None
        threading.Thread(target=kill_later).start()
        return slow(10)  # the worker dies before any answer (a bound on the wait above)

    upstream.faults = kill_the_caller
    ids = [POISON, *(f"fine-{i}" for i in range(20))]
    requests = [
        {
            "custom_id": i,
            "params": {
                "model": "claude-poison",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": i}],
            },
        }
        for i in ids
    ]
    restarts = 0
    with anthropic.Anthropic(base_url=cluster.url, api_key="sk-test", max_retries=0) as client:
        batch = client.messages.batches.create(requests=requests)
        deadline = time.monotonic() + HANG
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            assert time.monotonic() < deadline, "the poisonous request is still claimed"
            if cluster.workers[0].poll() is not None:  # a supervisor would restart it
                cluster.restart_worker(0)
                restarts += 1
            time.sleep(0.05)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}

    poisoned = results.pop(POISON)
    assert poisoned.type == "errored"
    assert poisoned.error.error.type == "api_error"
    assert f"gave up after {MAX_ATTEMPTS} attempts" in poisoned.error.error.message
    assert {r.type for r in results.values()} == {"succeeded"}
    assert upstream.calls(POISON) == MAX_ATTEMPTS
    assert restarts == MAX_ATTEMPTS
    tally["poisonous requests ended errored"] += 1
    tally["worker kills by a poisonous request"] += restarts
