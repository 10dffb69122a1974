"""One batch against an upstream that fails in every way it can, on each store.

Each request meets one fault, either on its first attempts only (then it must succeed)
or on every attempt (then it must end ``errored`` with the error type that fault means):
429 (one with a retry-after of ten minutes), 529, 500, an answer later than the timeout,
a connection reset mid-body, a body that trickles in (within the timeout, and past it),
a 200 that is not JSON, JSON that is no Message, a proxy's HTML error page. With a
timeout of 1 s and 2 retries, every request ends within its deadline: nothing hangs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.faults.conftest import Database, Tally
from tests.support.server import RunningServer, make_settings, serve_batchd
from tests.support.upstream import (
    MALFORMED,
    NOT_A_MESSAGE,
    RESET,
    FakeUpstream,
    Fault,
    html_error,
    overloaded,
    rate_limited,
    serve_upstream,
    server_error,
    slow,
    slow_body,
)

TIMEOUT = 1.0  # seconds per upstream call
RETRIES = 2
RETRY_MAX = 0.2  # seconds: the longest wait between tries, whatever retry-after says
PER_KIND = 4

# kind: (the fault, how many first attempts meet it (None: all), the result it must give)
PLANS: dict[str, tuple[Fault | None, int | None, str]] = {
    "fine": (None, 0, "succeeded"),
    "429-once": (rate_limited(), 1, "succeeded"),
    "429-always": (rate_limited(retry_after_ms=600_000), None, "rate_limit_error"),
    "529-twice": (overloaded(), 2, "succeeded"),
    "529-always": (overloaded(), None, "overloaded_error"),
    "500-once": (server_error(), 1, "succeeded"),
    "500-always": (server_error(), None, "api_error"),
    "late-once": (slow(1.5 * TIMEOUT), 1, "succeeded"),
    "late-always": (slow(1.5 * TIMEOUT), None, "timeout_error"),
    "reset-once": (RESET, 1, "succeeded"),
    "reset-always": (RESET, None, "api_error"),
    "trickle-always": (slow_body(TIMEOUT / 4), None, "succeeded"),
    "trickle-past-timeout": (slow_body(1.5 * TIMEOUT), None, "timeout_error"),
    "malformed-once": (MALFORMED, 1, "succeeded"),
    "malformed-always": (MALFORMED, None, "api_error"),
    "not-a-message-always": (NOT_A_MESSAGE, None, "api_error"),
    "html-502-always": (html_error(502), None, "api_error"),
}


def kind_of(key: str) -> str:
    return key.rsplit("-", 1)[0]


def fault_name(kind: str) -> str:
    """``529-twice`` -> ``529``: the fault, without how often it strikes."""
    for suffix in ("-once", "-twice", "-always", "-past-timeout"):
        kind = kind.removesuffix(suffix)
    return kind


def plan_rule(key: str, attempt: int) -> Fault | None:
    fault, failing, _ = PLANS[kind_of(key)]
    return fault if failing is None or attempt <= failing else None


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.01, faults=plan_rule) as running:
        yield running


@pytest.fixture
def server(tmp_path: Path, database: Database, upstream: FakeUpstream) -> Iterator[RunningServer]:
    backend = {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": upstream.url,
        "models": ["claude-*"],
        "max_concurrency": 128,  # every request at once: the deadline is one request's
        "adaptive_concurrency": False,
        "max_retries": RETRIES,
        "timeout_seconds": TIMEOUT,
    }
    settings = make_settings(
        str(tmp_path / "unused.db"),
        db=database.url,
        backends=[backend],
        retry_max_seconds=RETRY_MAX,
    )
    with serve_batchd(settings) as running:
        yield running


def batch_requests() -> list[Request]:
    return [
        {
            "custom_id": f"{kind}-{i}",
            "params": {
                "model": "claude-faults",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{kind}-{i}"}],
            },
        }
        for kind in PLANS
        for i in range(PER_KIND)
    ]


def test_every_request_ends_succeeded_or_errored_with_the_right_type_in_time(
    server: RunningServer, upstream: FakeUpstream, database: Database, tally: Tally
) -> None:
    # One request's worst case: every try runs to the timeout, every wait is the longest;
    # then a generous margin for a busy machine. The batch must end by then.
    deadline = (RETRIES + 1) * TIMEOUT + RETRIES * RETRY_MAX
    hang_guard = 10 * deadline + 10
    with anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0) as client:
        started = time.monotonic()
        batch = client.messages.batches.create(requests=batch_requests())
        while (seen := client.messages.batches.retrieve(batch.id)).processing_status != "ended":
            counts = seen.request_counts
            assert sum(counts.model_dump().values()) == len(PLANS) * PER_KIND, counts
            assert time.monotonic() - started < hang_guard, f"hung: {counts}"
            time.sleep(0.05)
        took = time.monotonic() - started
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}

    got = {}
    for custom_id, result in results.items():
        if result.type == "succeeded":
            assert result.message.content[0].type == "text"
            assert result.message.content[0].text == custom_id
            got[custom_id] = "succeeded"
        else:
            assert result.type == "errored", result
            got[custom_id] = result.error.error.type
    expected = {f"{kind}-{i}": plan[2] for kind, plan in PLANS.items() for i in range(PER_KIND)}
    assert got == expected
    calls = upstream.all_calls()
    tries = {key: calls[key] for key in expected}
    expected_tries = {
        key: 1 + (RETRIES if plan[1] is None and plan[2] != "succeeded" else plan[1] or 0)
        for key, plan in ((k, PLANS[kind_of(k)]) for k in expected)
    }
    assert tries == expected_tries
    tally["upstream batches survived"] += 1
    tally[f"upstream batch seconds (deadline {deadline:g} s per request): {database.kind}"] = round(
        took, 2
    )
    for key, n in tries.items():
        fault, failing, _ = PLANS[kind_of(key)]
        if fault is not None:
            faults = n if failing is None else min(n, failing)
            tally[f"upstream faults injected: {fault_name(kind_of(key))}"] += faults
