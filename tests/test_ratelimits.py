"""Reading an upstream's published budgets from its answers' headers (both vendors' names)."""

from __future__ import annotations

import pytest

from batchd.backends.ratelimits import Budget, duration_seconds, read_limits

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),  # a bare number of seconds
        ("soon", None),
        ("5x", None),
    ],
)
def test_durations(value: str, seconds: float | None) -> None:
    assert duration_seconds(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_anthropic_headers() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29000",
        "anthropic-ratelimit-input-tokens-reset": "2027-01-15T08:00:02Z",
    }
    assert read_limits(headers, NOW) == {
        "requests": Budget(50, 49, 30.0),
        "tokens": Budget(30000, 29000, 2.0),  # only input tokens limited: that budget
    }


def test_openai_headers() -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "89000",
        "x-ratelimit-reset-tokens": "1s",
    }
    found = read_limits(headers, NOW)
    assert found["requests"].reset == pytest.approx(0.12)
    assert (found["requests"].limit, found["requests"].remaining) == (500, 499)
    assert found["tokens"] == Budget(90000, 89000, 1.0)


@pytest.mark.parametrize(
    "headers",
    [
        {},  # nothing published
        {"x-ratelimit-limit-requests": "500"},  # no remaining figure
        {"x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0"},
        {"x-ratelimit-limit-requests": "many", "x-ratelimit-remaining-requests": "1"},
    ],
)
def test_no_usable_budget(headers: dict[str, str]) -> None:
    assert read_limits(headers, NOW) == {}
