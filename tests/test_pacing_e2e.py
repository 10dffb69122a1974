"""Pacing end to end: a batch finds an upstream's real capacity; interactive calls go first."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, wait_ended
from tests.support.upstream import FakeUpstream, serve_upstream

MODEL = "claude-paced"


def _requests(n: int) -> list[Request]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"prompt {i}"}],
            },
        }
        for i in range(n)
    ]


def _backend(upstream: FakeUpstream, **extra: object) -> dict[str, object]:
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": upstream.url,
        "models": ["claude-*"],
        "max_retries": 20,
        **extra,
    }


@pytest.fixture
def capped() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.02, capacity=8) as upstream:
        yield upstream


def test_a_batch_settles_at_the_upstreams_capacity(
    start_server: StartServer, capped: FakeUpstream
) -> None:
    server = start_server(backends=[_backend(capped, max_concurrency=64)])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        started = time.monotonic()
        batch = client.messages.batches.create(requests=_requests(3000))
        ended = wait_ended(client, batch.id, timeout=90)
        finished = time.monotonic()
    assert ended.request_counts.succeeded == 3000  # no request paid for the 429s
    # Past the first second (the limit comes down from 64), calls in progress stay near 8.
    mean = capped.mean_concurrency(started + 1.0, finished)
    assert 0.5 * 8 <= mean <= 1.2 * 8, mean
    assert capped.rejected < 3000  # it stopped knocking after it learned


def test_an_interactive_call_waits_for_one_call_not_for_the_batch(
    start_server: StartServer,
) -> None:
    with serve_upstream(latency=0.3) as upstream:
        backend = _backend(upstream, max_concurrency=4, adaptive_concurrency=False)
        server = start_server(backends=[backend])
        with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client:
            batch = client.messages.batches.create(requests=_requests(200))
            time.sleep(0.5)  # the backend is saturated: 4 in flight, 196 waiting
            started = time.monotonic()
            message = client.messages.create(
                model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "me first"}]
            )
            waited = time.monotonic() - started
            progress = client.messages.batches.retrieve(batch.id).request_counts
            client.messages.batches.cancel(batch.id)
    assert message.content[0].type == "text"
    assert upstream.peak == 4  # it waited for a slot: the limit held for everyone
    # At most one batch call to finish (0.3 s) and its own call (0.3 s), not 50 rounds.
    assert waited < 0.9, waited
    assert progress.processing > 150


def test_backend_status_shows_limit_retries_and_last_error(start_server: StartServer) -> None:
    with serve_upstream(latency=0.0, capacity=0) as refusing:  # answers every call with 429
        server = start_server(backends=[_backend(refusing, max_concurrency=8, max_retries=1)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            wait_ended(client, client.messages.batches.create(requests=_requests(4)).id)
            status = client.get("/status/backends", cast_to=object)
    assert isinstance(status, dict)
    [upstream] = [b for b in status["data"] if b["name"] == "upstream"]
    assert upstream["limit"] < 8  # the 429s brought it down
    assert upstream["retries"] == 4  # one retry each
    assert upstream["last_error"]["type"] == "rate_limit_error"
    assert upstream["in_flight"] == upstream["waiting"] == 0
