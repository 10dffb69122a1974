"""Expiry: what has not run when a batch's time to live is over ends as ``expired``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import anthropic
import pytest

from tests.conftest import StartServer, mock_request, wait_ended

SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 1,
    "latency_ms": 300,
}


@pytest.fixture
def slow_client(start_server: StartServer) -> Iterator[anthropic.Anthropic]:
    server = start_server(batch_ttl_seconds=0.5, backends=[SLOW_BACKEND])
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as c:
        yield c


def test_unrun_requests_expire_and_run_ones_succeed(slow_client: anthropic.Anthropic) -> None:
    requests = [mock_request(f"r{i}", model="slow-1") for i in range(10)]
    batch = slow_client.messages.batches.create(requests=requests)
    ended = wait_ended(slow_client, batch.id, timeout=10)

    counts = ended.request_counts
    assert counts.processing == 0
    assert counts.succeeded + counts.expired == 10
    assert 1 <= counts.succeeded <= 3  # 0.5 s at one request per 0.3 s
    assert ended.ended_at is not None
    assert ended.ended_at >= ended.expires_at
    results = list(slow_client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == sorted(f"r{i}" for i in range(10))
    assert Counter(r.result.type for r in results) == {
        "succeeded": counts.succeeded,
        "expired": counts.expired,
    }


def test_a_batch_that_finished_in_time_has_nothing_expired(start_server: StartServer) -> None:
    server = start_server(batch_ttl_seconds=2, backends=[{**SLOW_BACKEND, "latency_ms": 10}])
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        batch = client.messages.batches.create(
            requests=[mock_request(f"r{i}", model="slow-1") for i in range(5)]
        )
        ended = wait_ended(client, batch.id, timeout=10)
    assert ended.request_counts.succeeded == 5
    assert ended.request_counts.expired == 0
    assert ended.ended_at is not None
    assert ended.ended_at < ended.expires_at


def test_results_are_archived_after_the_retention_period(start_server: StartServer) -> None:
    server = start_server(results_retention_seconds=1.0)
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0) as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        ended = wait_ended(client, batch.id)
        assert ended.archived_at is None
        assert len(list(client.messages.batches.results(batch.id))) == 1
        time.sleep(1.1 - (time.time() - ended.created_at.timestamp()))
        archived = client.messages.batches.retrieve(batch.id)
        assert archived.archived_at is not None
        retention = archived.archived_at - archived.created_at
        assert abs(retention - timedelta(seconds=1)) < timedelta(milliseconds=1)
        with pytest.raises(anthropic.BadRequestError, match="archived"):
            list(client.messages.batches.results(batch.id))
