"""Priorities, deadlines, fair share and the flex lane, seen in the order in which a
saturated backend (one slot, its calls held until the test releases them) serves requests:
a timeline, not timings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, body_of, wait_ended, wait_until
from tests.support.keys import make_keys
from tests.support.openai_upstream import FakeOpenAI, serve_openai
from tests.support.server import RunningServer
from tests.support.status import backend_status
from tests.support.upstream import FakeUpstream

MODEL = "claude-lanes"


def _requests(prefix: str, n: int, text: str = "") -> list[Request]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": text or f"{prefix} {i}"}],
            },
        }
        for i in range(n)
    ]


def _backend(url: str, slots: int = 1) -> dict[str, object]:
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": url,
        "models": ["claude-*"],
        "max_concurrency": slots,
        "adaptive_concurrency": False,
        "interactive_extra_slot": False,  # the limit holds for every call: they all queue
    }


@pytest.fixture
def one_slot(start_server: StartServer, held: FakeUpstream) -> RunningServer:
    return start_server(backends=[_backend(held.url)])


@pytest.fixture
def client(one_slot: RunningServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=one_slot.url, api_key="k", max_retries=0) as c:
        yield c


def _serve(upstream: FakeUpstream, n: int) -> list[str]:
    """Let the held calls answer one at a time; the prefixes of the next ``n`` to arrive."""
    start = len(upstream.arrivals())
    for k in range(1, n + 1):
        upstream.release(1)
        wait_until(lambda k=k: len(upstream.arrivals()) >= start + k, "no call came")  # type: ignore[misc]
    return [key.split(" ")[0] for key in upstream.arrivals()[start : start + n]]


def _occupy(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    """A batch of one request that takes the one slot (held), so the next ones queue."""
    client.messages.batches.create(requests=_requests("blocker", 1))
    wait_until(lambda: len(upstream.arrivals()) == 1, "the blocker did not start")


def test_high_priority_goes_first_and_low_priority_still_progresses(
    client: anthropic.Anthropic, held: FakeUpstream
) -> None:
    _occupy(client, held)
    low = client.messages.batches.create(
        requests=_requests("low", 4), extra_headers={"batchd-priority": "low"}
    )
    high = client.messages.batches.create(
        requests=_requests("high", 30), extra_headers={"batchd-priority": "high"}
    )
    order = _serve(held, 16)  # the calls after the blocker's
    assert order[:7] == ["high"] * 7
    assert order.count("low") == 2  # every 8th slot: low moves while high still waits
    assert client.messages.batches.retrieve(high.id).request_counts.processing > 10
    held.release()
    assert wait_ended(client, low.id).request_counts.succeeded == 4
    assert wait_ended(client, high.id).request_counts.succeeded == 30


def test_the_earliest_deadline_goes_first(client: anthropic.Anthropic, held: FakeUpstream) -> None:
    _occupy(client, held)
    later = client.messages.batches.create(requests=_requests("day", 5))  # 24 h
    sooner = client.messages.batches.create(
        requests=_requests("hour", 5), extra_headers={"batchd-completion-window": "1h"}
    )
    assert _serve(held, 10) == ["hour"] * 5 + ["day"] * 5
    expires = sooner.expires_at - sooner.created_at
    assert expires.total_seconds() == 3600
    assert (later.expires_at - later.created_at).total_seconds() == 24 * 3600


@pytest.mark.parametrize(
    ("header", "value", "named"),
    [
        ("batchd-priority", "urgent", "low, normal, high"),
        ("batchd-completion-window", "30m", "from 1h to 7d"),
        ("batchd-completion-window", "8d", "from 1h to 7d"),
        ("batchd-completion-window", "0h", "from 1h to 7d"),
    ],
)
def test_a_priority_or_window_not_allowed_is_refused_and_nothing_stored(
    client: anthropic.Anthropic, header: str, value: str, named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=_requests("x", 2), extra_headers={header: value})
    error = body_of(refused.value)["error"]
    assert error["type"] == "invalid_request_error"
    assert named in error["message"]
    assert client.messages.batches.list().data == []


def test_flex_calls_wait_after_interactive_ones_and_before_batch_work(
    client: anthropic.Anthropic, held: FakeUpstream
) -> None:
    batch = client.messages.batches.create(requests=_requests("batch", 20))
    wait_until(lambda: len(held.arrivals()) == 1, "the batch did not start")

    def call(text: str, tier: str | None) -> Any:
        headers = {"batchd-service-tier": tier} if tier else {}
        return client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": text}],
            extra_headers=headers,
        )

    with ThreadPoolExecutor(2) as pool:
        flex: Future[Any] = pool.submit(call, "flex call", "flex")
        wait_until(lambda: backend_status(client)["waiting"] == 1, "the flex call did not wait")
        interactive: Future[Any] = pool.submit(call, "interactive call", None)
        wait_until(lambda: backend_status(client)["waiting"] == 2, "the call did not wait")
        assert _serve(held, 3) == ["interactive", "flex", "batch"]
        held.release()
        assert flex.result(timeout=30).content[0].type == "text"
        assert interactive.result(timeout=30).content[0].type == "text"
    wait_ended(client, batch.id)


def test_an_unknown_service_tier_is_refused(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"batchd-service-tier": "priority"},
        )
    assert "flex" in body_of(refused.value)["error"]["message"]


# -- fair share across workspaces ------------------------------------------------------------


@pytest.fixture
def teams(
    start_server: StartServer, tmp_path: Path, held: FakeUpstream
) -> Iterator[dict[str, anthropic.Anthropic]]:
    keys = make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    server = start_server(
        backends=[_backend(held.url, slots=2)], max_queued_input_tokens_per_workspace=20_000
    )
    opened = {
        name: anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
        for name, key in keys.items()
    }
    yield opened
    for opened_client in opened.values():
        opened_client.close()


def test_a_small_batch_finishes_while_another_workspaces_large_one_runs(
    teams: dict[str, anthropic.Anthropic], held: FakeUpstream
) -> None:
    alice, bob = teams["alice"], teams["bob"]
    large = alice.messages.batches.create(requests=_requests("large", 300))
    wait_until(lambda: len(held.arrivals()) == 2, "the large batch did not fill the slots")
    small = bob.messages.batches.create(requests=_requests("small", 6))
    order = _serve(held, 12)
    assert order.count("small") == 6  # every other freed slot was the small batch's
    for _ in range(12):  # until the small batch's last calls have answered too
        if bob.messages.batches.retrieve(small.id).processing_status == "ended":
            break
        _serve(held, 1)
    assert wait_ended(bob, small.id, timeout=30).request_counts.succeeded == 6
    assert alice.messages.batches.retrieve(large.id).request_counts.processing > 270
    held.release()
    wait_ended(alice, large.id)


def test_queued_input_tokens_over_the_quota_are_refused_naming_it(
    teams: dict[str, anthropic.Anthropic],
) -> None:
    bob = teams["bob"]
    with pytest.raises(anthropic.RateLimitError) as refused:
        bob.messages.batches.create(requests=_requests("big", 10, text="word " * 2_000))
    error = body_of(refused.value)["error"]
    assert error["type"] == "rate_limit_error"
    assert "max_queued_input_tokens_per_workspace" in error["message"]
    assert bob.messages.batches.list().data == []


# -- deadlines at risk -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_batch_that_will_miss_its_deadline_shows_as_at_risk(
    start_server: StartServer, held: FakeUpstream
) -> None:
    clock = Clock()
    server = start_server(backends=[_backend(held.url)], clock=clock)
    with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client:
        batch = client.messages.batches.create(
            requests=_requests("slow", 3),
            extra_headers={"batchd-priority": "high", "batchd-completion-window": "1h"},
        )
        schedule = client.get(f"/v1/messages/batches/{batch.id}/schedule", cast_to=object)
        assert schedule == {
            "id": batch.id,
            "priority": "high",
            "completion_window": "1h",
            "expires_at": schedule["expires_at"],  # type: ignore[index]
            "projected_end_at": None,
            "at_risk": False,
        }
        clock.now += 31 * 60  # half the window gone, nothing finished
        later = client.get(f"/v1/messages/batches/{batch.id}/schedule", cast_to=object)
        metrics = client.get("/metrics", cast_to=str)
    assert isinstance(later, dict)
    assert later["at_risk"] is True
    assert "batchd_batches_at_risk 1.0" in metrics


@pytest.fixture
def vllm(start_server: StartServer) -> Iterator[tuple[RunningServer, FakeOpenAI]]:
    """batchd in front of an OpenAI-compatible server that schedules by priority."""
    with serve_openai() as upstream:
        backend = {
            "name": "vllm",
            "kind": "openai",
            "base_url": upstream.url,
            "models": ["qwen-*"],
            "send_priority": True,
        }
        yield start_server(backends=[backend]), upstream


def test_the_lane_and_priority_go_upstream_where_it_schedules_by_them(
    vllm: tuple[RunningServer, FakeOpenAI],
) -> None:
    server, upstream = vllm
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        client.messages.create(
            model="qwen-7b", max_tokens=8, messages=[{"role": "user", "content": "now"}]
        )
        client.messages.create(
            model="qwen-7b",
            max_tokens=8,
            messages=[{"role": "user", "content": "flexible"}],
            extra_headers={"batchd-service-tier": "flex"},
        )
        for level in ("high", "low"):
            requests: list[Request] = [
                {
                    "custom_id": "one",
                    "params": {
                        "model": "qwen-7b",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": level}],
                    },
                }
            ]
            batch = client.messages.batches.create(
                requests=requests, extra_headers={"batchd-priority": level}
            )
            wait_ended(client, batch.id)
    sent = {key: body["priority"] for key, body in upstream.bodies().items()}
    assert sent == {"now": 0, "flexible": 1, "high": 2, "low": 4}  # vLLM: lower goes first


def test_service_tier_flex_on_the_openai_face_is_the_flex_lane(
    vllm: tuple[RunningServer, FakeOpenAI],
) -> None:
    server, upstream = vllm
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="k") as client:
        client.chat.completions.create(
            model="qwen-7b",
            messages=[{"role": "user", "content": "flexible"}],
            service_tier="flex",
        )
        client.chat.completions.create(
            model="qwen-7b", messages=[{"role": "user", "content": "now"}]
        )
    sent = {key: body["priority"] for key, body in upstream.bodies().items()}
    assert sent == {"flexible": 1, "now": 0}
