"""The retry rule, the retry loop, and how upstream answers become errors."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from batchd.backends.anthropic import error_from_response, message_from_body, retry_after_seconds
from batchd.backends.retry import RetryPolicy, call_with_retries
from batchd.errors import UpstreamError

POLICY = RetryPolicy(max_retries=3, base_seconds=0.5, max_seconds=4.0)


@pytest.mark.parametrize(
    ("failures", "retry_after", "jitter", "expected"),
    [
        (1, None, 0.0, 0.5),  # first retry: the base delay
        (2, None, 0.0, 1.0),  # doubles
        (3, None, 0.0, 2.0),
        (3, None, 1.0, 1.0),  # full jitter halves it at most
        (1, 2.5, 0.7, 2.5),  # the upstream's retry-after wins
        (1, 60.0, 0.0, 4.0),  # but never past the cap
        (4, None, 0.0, None),  # out of retries
        (4, 1.0, 0.0, None),  # also when the upstream named a delay
    ],
)
def test_delay(failures: int, retry_after: float | None, jitter: float, expected: float) -> None:
    assert POLICY.delay(failures, retry_after, jitter) == expected


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_retries=20, base_seconds=0.5, max_seconds=4.0)
    assert policy.delay(10, None, 0.0) == 4.0


def _transient(status: int = 529, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("busy", upstream_status=status, retry_after=retry_after)


async def _run(outcomes: list[Any], policy: RetryPolicy = POLICY) -> tuple[Any, list[float]]:
    slept: list[float] = []
    calls = iter(outcomes)

    async def call() -> dict[str, Any]:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return dict(outcome)

    async def wait(_: UpstreamError, seconds: float) -> None:
        slept.append(seconds)

    return await call_with_retries(call, policy, wait=wait, jitter=lambda: 0.0), slept


async def test_transient_failures_are_retried_until_success() -> None:
    result, slept = await _run([_transient(), _transient(429, 0.3), {"ok": 1}])
    assert (result, slept) == ({"ok": 1}, [0.5, 0.3])


async def test_permanent_failure_is_not_retried() -> None:
    with pytest.raises(UpstreamError) as info:
        await _run([UpstreamError("bad", upstream_status=400), {"ok": 1}])
    assert info.value.error_type == "invalid_request_error"


async def test_gives_up_after_max_retries_with_the_last_error() -> None:
    with pytest.raises(UpstreamError) as info:
        await _run([_transient()] * 4 + [{"ok": 1}])
    assert (info.value.upstream_status, info.value.error_type) == (529, "overloaded_error")


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms first
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": format_datetime(datetime.fromtimestamp(NOW + 7, UTC), usegmt=True)}, 7),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, NOW) == expected


@pytest.mark.parametrize(
    ("status", "headers", "error_type", "retryable"),
    [
        (400, {}, "invalid_request_error", False),
        (401, {}, "api_error", False),  # batchd's own key refused: batchd's fault
        (404, {}, "not_found_error", False),
        (408, {}, "timeout_error", True),
        (409, {}, "invalid_request_error", False),  # no lock to wait out on the Messages API
        (429, {}, "rate_limit_error", True),
        (500, {}, "api_error", True),
        (529, {}, "overloaded_error", True),
        (503, {"x-should-retry": "false"}, "overloaded_error", False),  # the upstream said no
        (400, {"x-should-retry": "true"}, "invalid_request_error", True),
    ],
)
def test_status_classification(
    status: int, headers: dict[str, str], error_type: str, retryable: bool
) -> None:
    error = error_from_response(status, b"not json", headers, NOW)
    assert (error.error_type, error.retryable) == (error_type, retryable)


@pytest.mark.parametrize(
    ("status", "named", "expected"),
    [
        (400, "no_db_connection", "invalid_request_error"),  # LiteLLM without its database
        (401, "auth_error", "api_error"),  # LiteLLM refusing batchd's key
        (429, "throttled", "rate_limit_error"),  # pacing sees a 429 as a 429
        (429, "invalid_request_error", "rate_limit_error"),
    ],
)
def test_only_the_apis_error_types_come_out(status: int, named: str, expected: str) -> None:
    body = b'{"type":"error","error":{"type":"%s","message":"m"}}' % named.encode()
    assert error_from_response(status, body, {}, NOW).error_type == expected


def test_upstream_error_envelope_is_passed_on() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    error = error_from_response(529, body, {"retry-after": "3"}, NOW)
    assert (error.error_type, error.message, error.retry_after) == (
        "overloaded_error",
        "Overloaded",
        3.0,
    )


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"id":"x"}', b'{"content":"text"}'])
def test_malformed_messages_are_transient_errors(body: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        message_from_body(body)
    assert info.value.retryable
