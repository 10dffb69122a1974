"""Pacing from the upstream's own signals, end to end against fakes that stand for real
upstreams: a concurrency limit whose 429s carry ``retry-after`` (LiteLLM), a requests-per-
minute budget published in Anthropic's and in OpenAI's headers, and a server that queues."""

from __future__ import annotations

import statistics
from itertools import pairwise

import anthropic
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, wait_ended
from tests.support.budget import RequestBudget
from tests.support.openai_upstream import serve_openai
from tests.support.status import backend_status
from tests.support.upstream import FakeUpstream, serve_upstream

MODEL = "claude-paced"


def _requests(n: int, model: str = MODEL) -> list[Request]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"prompt {i}"}],
            },
        }
        for i in range(n)
    ]


def _backend(url: str, **extra: object) -> dict[str, object]:
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": url,
        "models": ["claude-*"],
        "max_concurrency": 64,
        "max_retries": 20,
        **extra,
    }


def _retry_gaps(upstream: FakeUpstream, n: int) -> list[float]:
    """Seconds between a key's calls, over every key that was called more than once."""
    return [b - a for i in range(n) for a, b in pairwise(upstream.times(f"prompt {i}"))]


def test_a_retry_after_on_a_concurrency_limit_does_not_idle_the_backend(
    start_server: StartServer,
) -> None:
    # LiteLLM answers a concurrency limit with 429 and retry-after: 60. Waiting it out
    # idled the backend 50 s of every minute; the refused calls now retry once calls that
    # started after them get through.
    with serve_upstream(latency=0.02, capacity=4, capacity_retry_after=60) as upstream:
        server = start_server(backends=[_backend(upstream.url)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            batch = client.messages.batches.create(requests=_requests(300))
            ended = wait_ended(client, batch.id, timeout=50)
            status = backend_status(client)
    assert ended.request_counts.succeeded == 300
    assert upstream.rejected > 0  # the limit was met, and its retry-after sent
    gaps = _retry_gaps(upstream, 300)
    assert gaps  # some calls were refused and retried ...
    assert max(gaps) < 30, max(gaps)  # ... and none waited out the 60 s
    assert status["limit"] <= 8
    assert status["limit_source"] in ("congestion", "growth")


def test_anthropic_rate_limit_headers_keep_a_batch_within_the_budget(
    start_server: StartServer,
) -> None:
    budget = RequestBudget(1200, burst_seconds=5)  # 20 a second, 100 at once
    with serve_upstream(budget=budget) as upstream:
        server = start_server(backends=[_backend(upstream.url)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            batch = client.messages.batches.create(requests=_requests(220))
            ended = wait_ended(client, batch.id, timeout=60)
            status = backend_status(client)
    assert ended.request_counts.succeeded == 220
    assert budget.refused <= 3, budget.refused  # about 1%: the headers paced it
    assert upstream.admitted == 220
    assert status["budgets"]["requests"]["limit"] == 1200
    assert status["budgets"]["requests"]["per_minute"] == 1200


def test_openai_rate_limit_headers_keep_a_batch_within_the_budget(
    start_server: StartServer,
) -> None:
    budget = RequestBudget(1200, burst_seconds=5, style="openai")
    with serve_openai(budget=budget) as upstream:
        backend = {
            "name": "upstream",
            "kind": "openai",
            "base_url": upstream.url,
            "models": ["qwen-*"],
            "max_concurrency": 64,
            "max_retries": 20,
        }
        server = start_server(backends=[backend])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            batch = client.messages.batches.create(requests=_requests(220, model="qwen-7b"))
            ended = wait_ended(client, batch.id, timeout=60)
            status = backend_status(client)
    assert ended.request_counts.succeeded == 220
    assert budget.refused <= 3, budget.refused
    assert status["budgets"]["requests"]["limit"] == 1200


def test_a_queueing_upstream_is_held_near_its_knee(start_server: StartServer) -> None:
    # Never a 429: past 8 calls in progress every call just takes longer.
    with serve_upstream(latency=0.05, knee=8) as upstream:
        server = start_server(backends=[_backend(upstream.url, max_concurrency=128)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            batch = client.messages.batches.create(requests=_requests(1200))
            ended = wait_ended(client, batch.id, timeout=90)
            status = backend_status(client)
            metrics = client.get("/metrics", cast_to=str)
    assert ended.request_counts.succeeded == 1200
    assert upstream.rejected == 0
    levels = upstream.levels_at_admission()[400:]
    # Near the knee, not at 128 (bench/pacing.py measures the 1.5x goal at a knee of 16:
    # with 8, one call more or less is an eighth, and this machine's load moves latencies).
    assert statistics.mean(levels) <= 2 * 8, statistics.mean(levels)
    assert status["limit"] <= 16
    assert 'batchd_backend_limit_source{backend="upstream",source="latency"}' in metrics
