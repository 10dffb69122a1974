"""Pacing end to end: a batch finds an upstream's real capacity; interactive calls go first."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, wait_ended, wait_until
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
        batch = client.messages.batches.create(requests=_requests(3000))
        ended = wait_ended(client, batch.id, timeout=90)
    assert ended.request_counts.succeeded == 3000  # no request paid for the 429s
    # Past the first 500 calls (the limit comes down from 64), calls in progress stay near 8.
    levels = capped.levels_at_admission()[500:]
    mean = statistics.mean(levels)
    assert 0.5 * 8 <= mean <= 8, mean
    assert capped.rejected < 3000  # it stopped knocking after it learned


def _backend_status(client: anthropic.Anthropic) -> dict[str, Any]:
    status = client.get("/status/backends", cast_to=object)
    assert isinstance(status, dict)
    [upstream] = [b for b in status["data"] if b["name"] == "upstream"]
    assert isinstance(upstream, dict)
    return upstream


def test_an_interactive_call_takes_the_first_free_slot_before_the_batch(
    start_server: StartServer,
) -> None:
    with serve_upstream() as upstream:
        upstream.hold()  # every call waits upstream until released
        backend = _backend(
            upstream, max_concurrency=4, adaptive_concurrency=False, interactive_extra_slot=False
        )
        server = start_server(backends=[backend])
        with (
            anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            batch = client.messages.batches.create(requests=_requests(200))
            wait_until(lambda: upstream.active == 4, "the batch did not fill the backend")
            asking = pool.submit(
                lambda: client.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "me first"}]
                )
            )
            wait_until(lambda: _backend_status(client)["waiting"] == 1, "the call did not wait")
            upstream.release(1)  # one batch call ends: its slot is the first free one
            wait_until(lambda: len(upstream.arrivals()) == 5, "the free slot was not taken")
            upstream.release()
            message = asking.result(timeout=30)
            client.messages.batches.cancel(batch.id)
            wait_ended(client, batch.id)
    assert upstream.arrivals()[4] == "me first"  # not one of the 196 batch requests waiting
    assert upstream.peak == 4  # the limit held for everyone
    assert message.content[0].type == "text"


def test_an_interactive_call_finding_the_batch_in_every_slot_takes_one_more(
    start_server: StartServer,
) -> None:
    with serve_upstream() as upstream:
        upstream.hold()
        backend = _backend(upstream, max_concurrency=4, adaptive_concurrency=False)
        server = start_server(backends=[backend])
        with (
            anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client,
            ThreadPoolExecutor(2) as pool,
        ):

            def ask(text: str) -> Any:
                return client.messages.create(
                    model=MODEL, max_tokens=8, messages=[{"role": "user", "content": text}]
                )

            batch = client.messages.batches.create(requests=_requests(200))
            wait_until(lambda: upstream.active == 4, "the batch did not fill the backend")
            first = pool.submit(ask, "me first")
            wait_until(lambda: upstream.active == 5, "the call waited for a batch call")
            second = pool.submit(ask, "me second")  # one past the limit at most
            wait_until(lambda: _backend_status(client)["waiting"] == 1, "the call did not wait")
            upstream.release(2)  # two calls end: one under the limit, the next slot freed
            wait_until(lambda: len(upstream.arrivals()) == 6, "the free slot was not taken")
            upstream.release()
            answers = first.result(timeout=30), second.result(timeout=30)
            client.messages.batches.cancel(batch.id)
            wait_ended(client, batch.id)
    assert upstream.arrivals()[4:6] == ["me first", "me second"]
    assert upstream.peak == 5  # one past the limit, and only once
    assert [answer.content[0].type for answer in answers] == ["text", "text"]


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
