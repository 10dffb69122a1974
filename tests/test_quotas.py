"""Quotas: a workspace's backlog of unfinished batches and waiting requests, and the
interactive calls one key may have in progress, through the real SDK over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.keys import make_keys
from tests.support.server import RunningServer
from tests.support.upstream import FakeUpstream, backend_of


@pytest.fixture
def quota_server(start_server: StartServer, tmp_path: Path, held: FakeUpstream) -> RunningServer:
    make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    backend = backend_of(held, max_concurrency=4)
    return start_server(
        backends=[backend],
        max_unfinished_batches_per_workspace=2,
        max_queued_requests_per_workspace=10,
        max_concurrent_calls_per_key=1,
    )


@pytest.fixture
def clients(
    quota_server: RunningServer, tmp_path: Path
) -> Iterator[dict[str, anthropic.Anthropic]]:
    keys = make_keys(tmp_path / "batchd.db", {"alice2": "team-a", "bob2": "team-b"})
    opened = {
        name: anthropic.Anthropic(
            base_url=quota_server.url,
            api_key=keys[f"{name}2"],
            max_retries=0,
            _strict_response_validation=True,
        )
        for name in ("alice", "bob")
    }
    yield opened
    for client in opened.values():
        client.close()


def _requests(prefix: str, n: int) -> list[Request]:
    return [mock_request(f"{prefix}{i}", model="claude-1") for i in range(n)]


def test_a_create_over_the_queued_requests_quota_stores_nothing(
    clients: dict[str, anthropic.Anthropic], held: FakeUpstream
) -> None:
    alice = clients["alice"]
    first = alice.messages.batches.create(requests=_requests("a", 8))

    with pytest.raises(anthropic.RateLimitError) as refused:
        alice.messages.batches.create(requests=_requests("b", 3))  # 8 + 3 > 10

    assert "max_queued_requests_per_workspace" in refused.value.message
    assert [b.id for b in alice.messages.batches.list()] == [first.id]  # nothing stored
    # Another workspace's backlog is its own.
    assert clients["bob"].messages.batches.create(requests=_requests("c", 10)).id
    held.release()


def test_a_create_over_the_unfinished_batches_quota_waits_for_one_to_end(
    clients: dict[str, anthropic.Anthropic], held: FakeUpstream
) -> None:
    alice = clients["alice"]
    first = alice.messages.batches.create(requests=_requests("a", 1))
    alice.messages.batches.create(requests=_requests("b", 1))

    with pytest.raises(anthropic.RateLimitError) as refused:
        alice.messages.batches.create(requests=_requests("c", 1))
    assert "max_unfinished_batches_per_workspace" in refused.value.message
    assert len(alice.messages.batches.list().data) == 2

    held.release()
    wait_ended(alice, first.id)
    wait_until(
        lambda: all(b.processing_status == "ended" for b in alice.messages.batches.list()),
        "the two batches did not end",
    )
    assert alice.messages.batches.create(requests=_requests("c", 1)).id  # room again


def test_a_key_has_one_interactive_call_at_a_time(
    clients: dict[str, anthropic.Anthropic], held: FakeUpstream
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    answers: list[str] = []

    def call() -> None:
        message = alice.messages.create(
            model="claude-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        answers.append(message.id)

    first = threading.Thread(target=call)
    first.start()
    try:
        wait_until(lambda: held.active == 1, "the first call did not reach the upstream")
        with pytest.raises(anthropic.RateLimitError) as refused:
            alice.messages.count_tokens(
                model="claude-1", messages=[{"role": "user", "content": "hi"}]
            )
        assert "1 interactive calls in progress" in refused.value.message
        # Another key is not held back by it.
        assert (
            bob.messages.count_tokens(
                model="claude-1", messages=[{"role": "user", "content": "hi"}]
            ).input_tokens
            > 0
        )
    finally:
        held.release()
        first.join()
    assert len(answers) == 1
    assert (
        alice.messages.count_tokens(  # the slot is free again
            model="claude-1", messages=[{"role": "user", "content": "hi"}]
        ).input_tokens
        > 0
    )
