"""Expiry and archival, on a clock the test moves: what has not run when a batch's time
to live is over ends as ``expired``; results are archived after the retention period."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import anthropic
import pytest

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.clock import ManualClock
from tests.support.upstream import FakeUpstream

TTL = 3600.0
MODEL = "claude-expiring"


def test_unrun_requests_expire_and_run_ones_succeed(
    start_server: StartServer, held: FakeUpstream
) -> None:
    clock = ManualClock()
    backend = {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": held.url,
        "models": ["claude-*"],
        "max_concurrency": 1,
        "adaptive_concurrency": False,
    }
    server = start_server(batch_ttl_seconds=TTL, backends=[backend], clock=clock)
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        requests = [mock_request(f"r{i}", model=MODEL) for i in range(10)]
        batch = client.messages.batches.create(requests=requests)
        held.release(2)
        wait_until(
            lambda: client.messages.batches.retrieve(batch.id).request_counts.succeeded == 2,
            "two requests did not succeed",
        )
        wait_until(lambda: held.active == 1, "the third request did not reach the upstream")
        clock.advance(TTL)  # the third is held upstream, seven are queued: time is up
        ended = wait_ended(client, batch.id, timeout=30)
        held.release()
        results = list(client.messages.batches.results(batch.id))

    counts = ended.request_counts
    assert (counts.succeeded, counts.expired, counts.processing) == (2, 8, 0)
    assert ended.ended_at is not None
    assert ended.ended_at >= ended.expires_at
    assert sorted(r.custom_id for r in results) == sorted(f"r{i}" for i in range(10))
    assert Counter(r.result.type for r in results) == {"succeeded": 2, "expired": 8}


def test_a_batch_that_finished_in_time_has_nothing_expired(start_server: StartServer) -> None:
    clock = ManualClock()
    server = start_server(batch_ttl_seconds=TTL, clock=clock)
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
        batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(5)])
        ended = wait_ended(client, batch.id, timeout=30)
        clock.advance(TTL)  # past its deadline now: an ended batch stays as it ended
        after = client.messages.batches.retrieve(batch.id)
    assert ended.request_counts.succeeded == 5
    assert ended.request_counts.expired == 0
    assert ended.ended_at is not None
    assert ended.ended_at < ended.expires_at
    assert after.request_counts == ended.request_counts


def test_results_are_archived_after_the_retention_period(start_server: StartServer) -> None:
    clock = ManualClock(1_800_000_000.0)
    retention = 29 * 24 * 3600.0
    server = start_server(results_retention_seconds=retention, clock=clock)
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0) as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        ended = wait_ended(client, batch.id)
        clock.advance(retention - 1)
        assert client.messages.batches.retrieve(batch.id).archived_at is None
        assert len(list(client.messages.batches.results(batch.id))) == 1
        clock.advance(1)
        archived = client.messages.batches.retrieve(batch.id)
        assert archived.archived_at is not None
        assert archived.archived_at - ended.created_at == timedelta(seconds=retention)
        with pytest.raises(anthropic.BadRequestError, match="archived"):
            list(client.messages.batches.results(batch.id))
