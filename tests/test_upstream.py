"""Fault injection: batchd's anthropic backend against a fake upstream, driven by the SDK."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import anthropic
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

from tests.conftest import StartServer, wait_ended
from tests.support.upstream import (
    MALFORMED,
    RESET,
    FakeUpstream,
    Fault,
    always,
    first_attempt_of,
    first_attempts,
    invalid_request,
    is_picked,
    overloaded,
    rate_limited,
    serve_upstream,
    server_error,
    slow,
    unauthorized,
)

MODEL = "claude-test"
UPSTREAM_KEY_ENV = "BATCHD_TEST_UPSTREAM_KEY"

Connect = Callable[..., tuple[anthropic.Anthropic, FakeUpstream]]


@pytest.fixture
def connect(start_server: StartServer) -> Iterator[Connect]:
    """Start a fake upstream, then batchd routing ``claude-*`` to it; return an SDK client.

    Keyword arguments go to the fake upstream (``latency``, ``faults``, ``api_key``);
    ``backend`` overrides the backend table and ``settings`` batchd's Settings.
    """
    with ExitStack() as stack:

        def connect(
            *,
            backend: dict[str, Any] | None = None,
            settings: dict[str, Any] | None = None,
            **upstream_options: Any,
        ) -> tuple[anthropic.Anthropic, FakeUpstream]:
            upstream = stack.enter_context(serve_upstream(**upstream_options))
            table = {
                "name": "upstream",
                "kind": "anthropic",
                "base_url": upstream.url,
                "models": ["claude-*"],
                "max_concurrency": 16,
                "max_retries": 3,
                "timeout_seconds": 5,
                **(backend or {}),
            }
            server = start_server(backends=[table], **(settings or {}))
            client = anthropic.Anthropic(base_url=server.url, api_key="sk-test")
            stack.callback(client.close)
            return client, upstream

        yield connect


def prompt(custom_id: str) -> str:
    return f"prompt for {custom_id}"


def upstream_request(custom_id: str) -> dict[str, Any]:
    params = {
        "model": MODEL,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": prompt(custom_id)}],
    }
    return {"custom_id": custom_id, "params": params}


def run_batch(client: anthropic.Anthropic, n: int) -> tuple[MessageBatch, list[Any]]:
    batch = client.messages.batches.create(requests=[upstream_request(f"r{i}") for i in range(n)])
    ended = wait_ended(client, batch.id, timeout=30)
    return ended, list(client.messages.batches.results(batch.id))


def by_custom_id(results: list[MessageBatchIndividualResponse]) -> dict[str, Any]:
    counts = Counter(r.custom_id for r in results)
    assert all(n == 1 for n in counts.values()), counts.most_common(3)
    return {r.custom_id: r.result for r in results}


@pytest.mark.parametrize(
    "fault",
    [
        overloaded(),  # 529 overloaded_error
        server_error(),  # 500 api_error
        rate_limited(retry_after_ms=20),  # 429 with retry-after-ms
        RESET,  # connection dropped in the middle of the body
        MALFORMED,  # 200 whose body is not JSON
    ],
    ids=["529", "500", "429", "reset", "malformed"],
)
def test_transient_failures_are_retried_until_all_succeed(connect: Connect, fault: Fault) -> None:
    client, upstream = connect(faults=first_attempt_of(0.3, fault, seed=1))
    ended, results = run_batch(client, 60)
    assert ended.request_counts.succeeded == 60
    outcome = by_custom_id(results)
    assert sorted(outcome) == sorted(f"r{i}" for i in range(60))
    assert all(r.type == "succeeded" for r in outcome.values())
    assert all(r.message.content[0].text == prompt(cid) for cid, r in outcome.items())
    picked = {prompt(f"r{i}") for i in range(60) if is_picked(prompt(f"r{i}"), 0.3, seed=1)}
    assert 5 < len(picked) < 30
    assert upstream.all_calls() == {
        prompt(f"r{i}"): 1 + (prompt(f"r{i}") in picked) for i in range(60)
    }


def test_mixed_transient_failures_all_succeed(connect: Connect) -> None:
    faults = first_attempt_of(0.3, overloaded(), server_error(), rate_limited(50), seed=2)
    client, upstream = connect(faults=faults, latency=0.002)
    ended, results = run_batch(client, 200)
    assert ended.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 200,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert {cid: r.type for cid, r in by_custom_id(results).items()} == {
        f"r{i}": "succeeded" for i in range(200)
    }
    assert sum(upstream.all_calls().values()) > 220  # ~60 first attempts failed


@pytest.mark.parametrize(
    ("fault", "error_type", "said"),
    [
        (
            invalid_request("messages.0.content: the upstream dislikes this"),
            "invalid_request_error",
            "",
        ),
        # batchd's own upstream key refused: the server's fault, not the client's key
        (unauthorized("the upstream rejects this key"), "api_error", "upstream credentials"),
        # a proxy's own error type never reaches a client: the status decides
        (Fault("status", 400, "no_db_connection", "no database"), "invalid_request_error", ""),
        (Fault("status", 422, "unprocessable", "bad field"), "invalid_request_error", ""),
    ],
    ids=["400", "401", "proxy-type", "422"],
)
def test_permanent_failures_are_errored_at_once(
    connect: Connect, fault: Fault, error_type: str, said: str
) -> None:
    client, upstream = connect(faults=always(fault))
    ended, results = run_batch(client, 10)
    assert ended.request_counts.errored == 10
    for result in by_custom_id(results).values():
        assert result.type == "errored"
        assert result.error.type == "error"
        assert result.error.error.type == error_type
        assert fault.message in result.error.error.message
        assert said in result.error.error.message
    assert upstream.all_calls() == {prompt(f"r{i}"): 1 for i in range(10)}


def test_overloaded_past_the_retry_limit_is_errored(connect: Connect) -> None:
    client, upstream = connect(
        faults=always(overloaded("upstream is overloaded")), backend={"max_retries": 2}
    )
    ended, results = run_batch(client, 5)
    assert ended.request_counts.errored == 5
    for result in by_custom_id(results).values():
        assert result.type == "errored"
        assert result.error.error.type == "overloaded_error"
        assert result.error.error.message == "upstream is overloaded"
    assert upstream.all_calls() == {prompt(f"r{i}"): 3 for i in range(5)}


def test_timeouts_are_errored_after_retries(connect: Connect) -> None:
    client, upstream = connect(
        faults=always(slow(1.0)), backend={"timeout_seconds": 0.2, "max_retries": 1}
    )
    ended, results = run_batch(client, 4)
    assert ended.request_counts.errored == 4
    for result in by_custom_id(results).values():
        assert result.type == "errored"
        assert result.error.error.type == "timeout_error"
    assert upstream.all_calls() == {prompt(f"r{i}"): 2 for i in range(4)}


def test_counts_sum_to_the_batch_size_at_every_poll(connect: Connect) -> None:
    client, _ = connect(
        faults=first_attempt_of(0.3, overloaded(), seed=3),
        latency=0.01,
        backend={"max_concurrency": 4},
    )
    batch = client.messages.batches.create(requests=[upstream_request(f"r{i}") for i in range(100)])
    polls = []
    deadline = time.monotonic() + 30
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        batch = client.messages.batches.retrieve(batch.id)
        polls.append(batch.request_counts)
    assert batch.processing_status == "ended"
    assert all(
        c.processing + c.succeeded + c.errored + c.canceled + c.expired == 100 for c in polls
    )
    assert len({c.processing for c in polls}) > 3  # counts moved while we watched
    assert polls[-1].succeeded == 100


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({}, 0.0, 0.2),  # no hint: the 10 ms backoff of the test settings
        ({"retry-after-ms": "300"}, 0.28, 0.9),
        ({"retry-after": "1"}, 0.95, 1.8),
    ],
    ids=["none", "retry-after-ms", "retry-after"],
)
def test_retry_after_is_honoured(
    connect: Connect, headers: dict[str, str], low: float, high: float
) -> None:
    fault = Fault("status", 429, "rate_limit_error", "slow down", headers)
    client, upstream = connect(faults=first_attempts(1, fault), settings={"retry_max_seconds": 5.0})
    ended, _ = run_batch(client, 1)
    assert ended.request_counts.succeeded == 1
    first, second = upstream.times(prompt("r0"))
    assert low <= second - first < high


def test_upstream_key_comes_from_api_key_env(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-upstream-secret")
    client, upstream = connect(
        api_key="sk-upstream-secret", backend={"api_key_env": UPSTREAM_KEY_ENV}
    )
    ended, _ = run_batch(client, 3)
    assert ended.request_counts.succeeded == 3
    assert upstream.api_keys_sent() == ["sk-upstream-secret"] * 3


def test_a_wrong_upstream_key_is_the_servers_fault_in_results(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-stale")
    client, upstream = connect(
        api_key="sk-upstream-secret", backend={"api_key_env": UPSTREAM_KEY_ENV}
    )
    ended, results = run_batch(client, 3)
    assert ended.request_counts.errored == 3
    assert {r.result.error.error.type for r in results} == {"api_error"}
    assert all("upstream credentials" in r.result.error.error.message for r in results)
    assert upstream.api_keys_sent() == ["sk-stale"] * 3


def test_messages_create_is_answered_by_the_upstream(connect: Connect) -> None:
    client, upstream = connect()
    message = client.messages.create(
        model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "hello upstream"}]
    )
    assert message.model == MODEL
    assert message.content[0].type == "text"
    assert message.content[0].text == "hello upstream"
    assert upstream.all_calls() == {"hello upstream": 1}


def test_messages_create_passes_an_upstream_400_to_the_sdk(connect: Connect) -> None:
    client, upstream = connect(faults=always(invalid_request("max_tokens: 10000000 > 8192")))
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(
            model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "too long"}]
        )
    assert raised.value.status_code == 400
    assert raised.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: 10000000 > 8192",
    }
    assert upstream.all_calls() == {"too long": 1}


def test_messages_create_blames_batchd_when_the_upstream_refuses_its_key(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-stale")
    client, _ = connect(api_key="sk-upstream-secret", backend={"api_key_env": UPSTREAM_KEY_ENV})
    with pytest.raises(anthropic.InternalServerError) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 500  # the API's status for api_error
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "refused batchd's upstream credentials" in raised.value.body["error"]["message"]  # type: ignore[index]
    assert raised.value.response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        # a proxy's own type is not the API's: the status decides
        (Fault("status", 400, "no_db_connection", "no db"), anthropic.BadRequestError, 400),
        # the API answers invalid_request_error with 400, never 422
        (Fault("status", 422, "invalid_request_error", "bad"), anthropic.BadRequestError, 400),
        # a 429 is a rate limit whatever its body names
        (Fault("status", 429, "invalid_request_error", "slow"), anthropic.RateLimitError, 429),
    ],
    ids=["proxy-type", "422", "429-misnamed"],
)
def test_messages_create_answers_with_the_apis_type_and_status(
    connect: Connect, fault: Fault, error: type[anthropic.APIStatusError], status: int
) -> None:
    client, _ = connect(faults=always(fault), backend={"max_retries": 0})
    with pytest.raises(error) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "odd"}]
        )
    assert raised.value.status_code == status
    assert raised.value.body["error"] == {  # type: ignore[index]
        "type": {400: "invalid_request_error", 429: "rate_limit_error"}[status],
        "message": fault.message,
    }


def test_messages_create_tells_the_sdk_what_the_engine_decided(connect: Connect) -> None:
    client, _ = connect(faults=always(server_error()), backend={"max_retries": 0})
    with pytest.raises(anthropic.InternalServerError) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "boom"}]
        )
    assert raised.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert raised.value.response.headers["x-should-retry"] == "true"  # a 5xx may pass


def test_messages_create_retries_less_than_batches(connect: Connect) -> None:
    client, upstream = connect(faults=always(overloaded()), backend={"max_retries": 6})
    with pytest.raises(anthropic.APIStatusError) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "busy"}]
        )
    assert raised.value.status_code == 529
    assert upstream.all_calls() == {"busy": 3}  # the first call and two retries
