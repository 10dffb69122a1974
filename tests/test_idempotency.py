"""Idempotent create (batchd's own): an ``Idempotency-Key`` header makes a repeated create
with the same key and body answer the batch the first one made, for 24 hours."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from tests.conftest import StartServer, body_of, mock_request
from tests.support.keys import make_keys


def test_two_creates_with_one_key_give_one_batch(client: anthropic.Anthropic) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = client.messages.batches.create(requests=[mock_request("a")], extra_headers=key)
    again = client.messages.batches.create(requests=[mock_request("a")], extra_headers=key)
    assert again.id == first.id
    assert [b.id for b in client.messages.batches.list()] == [first.id]


def test_creates_without_a_key_are_each_a_batch(client: anthropic.Anthropic) -> None:
    client.messages.batches.create(requests=[mock_request("a")])
    client.messages.batches.create(requests=[mock_request("a")])
    assert len(client.messages.batches.list().data) == 2


def test_one_key_with_another_body_is_a_400_and_creates_nothing(
    client: anthropic.Anthropic,
) -> None:
    key = {"Idempotency-Key": "k-1"}
    client.messages.batches.create(requests=[mock_request("a")], extra_headers=key)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=[mock_request("b")], extra_headers=key)
    error = body_of(refused.value)["error"]
    assert error["type"] == "invalid_request_error"
    assert "already used with a different request body" in error["message"]
    assert len(client.messages.batches.list().data) == 1


def test_keys_are_a_workspace_s_own(start_server: StartServer, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"a": "team-a", "b": "team-b"})
    server = start_server()
    made = []
    for name in ("a", "b"):
        with anthropic.Anthropic(base_url=server.url, api_key=keys[name]) as client:
            made.append(
                client.messages.batches.create(
                    requests=[mock_request("a")], extra_headers={"Idempotency-Key": "shared"}
                ).id
            )
    assert made[0] != made[1]


def test_a_key_that_is_not_printable_ascii_is_a_400(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(
            requests=[mock_request("a")], extra_headers={"Idempotency-Key": "x" * 256}
        )
    assert "Idempotency-Key" in body_of(refused.value)["error"]["message"]
