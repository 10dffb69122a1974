"""The engine's scheduling promises, seen through the SDK."""

from __future__ import annotations

import time
from pathlib import Path

import anthropic
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.server import make_settings, serve_batchd

SLOW = {"name": "slow", "kind": "mock", "models": ["slow-*"], "max_concurrency": 8}


def _slow_requests(prefix: str, n: int) -> list[Request]:
    return [mock_request(f"{prefix}{i}", model="slow-1") for i in range(n)]


def test_a_small_batch_is_not_held_back_by_a_big_one(start_server: StartServer) -> None:
    server = start_server(backends=[{**SLOW, "latency_ms": 50}])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        big = client.messages.batches.create(requests=_slow_requests("big", 400))
        small = client.messages.batches.create(requests=_slow_requests("small", 10))
        wait_ended(client, small.id, timeout=30)
        big_now = client.messages.batches.retrieve(big.id)
        # 400 requests at 8 in flight and 50 ms each take 2.5 s; 10 more take a fraction.
        assert big_now.request_counts.processing > 300
        assert wait_ended(client, big.id).request_counts.succeeded == 400


def test_concurrency_limit_paces_a_backend(start_server: StartServer) -> None:
    server = start_server(backends=[{**SLOW, "max_concurrency": 2, "latency_ms": 100}])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=_slow_requests("r", 6))
        ended = wait_ended(client, batch.id)
    assert ended.ended_at is not None
    # Two at a time, 100 ms each: three rounds at least.
    assert (ended.ended_at - ended.created_at).total_seconds() >= 0.3


def test_stopping_returns_unfinished_work_for_the_next_start(tmp_path: Path) -> None:
    db = str(tmp_path / "restart.db")
    hanging = {**SLOW, "max_concurrency": 4, "latency_ms": 60_000}
    with serve_batchd(make_settings(db, backends=[hanging], lease_seconds=600)) as first:
        with anthropic.Anthropic(base_url=first.url, api_key="k") as client:
            batch = client.messages.batches.create(requests=_slow_requests("r", 4))
        time.sleep(0.5)  # all four are claimed and hang upstream
    # A graceful stop hands the leases back: the next start need not wait 600 s for them.
    fast = {**SLOW, "latency_ms": 0}
    settings = make_settings(db, backends=[fast], lease_seconds=600)
    with (
        serve_batchd(settings) as second,
        anthropic.Anthropic(base_url=second.url, api_key="k") as client,
    ):
        ended = wait_ended(client, batch.id, timeout=15)
    assert ended.request_counts.succeeded == 4
