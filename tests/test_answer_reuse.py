"""Answer reuse (batchd's own, a backend's ``reuse_answers``): a request whose canonical params
match one that already succeeded on that backend in the same workspace is answered from the
stored result, without an upstream call; "deterministic" does so for temperature 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.keys import make_keys
from tests.support.upstream import FakeUpstream, serve_upstream, upstream_backend


def _backend(upstream: FakeUpstream, reuse: str) -> dict[str, Any]:
    return upstream_backend(upstream, max_concurrency=64, reuse_answers=reuse)


def _requests(n: int, user: str = "u1", **params: Any) -> list[Request]:
    """Even requests at temperature 0, odd ones at 0.7; each its own text (the upstream's key)."""
    return [
        mock_request(f"r{i}", f"q{i}", model="claude-1", temperature=0 if i % 2 == 0 else 0.7,
                     metadata={"user_id": user}, **params)
        for i in range(n)
    ]  # fmt: skip


def _run(client: anthropic.Anthropic, requests: list[Request]) -> dict[str, str]:
    """Run a batch to its end; each custom_id's message id."""
    batch = client.messages.batches.create(requests=requests)
    assert wait_ended(client, batch.id).request_counts.succeeded == len(requests)
    ids = {}
    for result in client.messages.batches.results(batch.id):
        assert result.result.type == "succeeded"
        ids[result.custom_id] = result.result.message.id
    return ids


def test_a_resubmitted_batch_calls_upstream_only_for_what_is_not_deterministic(
    start_server: StartServer,
) -> None:
    with serve_upstream() as upstream:
        server = start_server(backends=[_backend(upstream, "deterministic")])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            first = _run(client, _requests(1000))
            second = _run(client, _requests(1000, user="u2"))  # metadata: not in the key
            batch = client.messages.batches.list().data[0]
            details = client.get(f"/v1/messages/batches/{batch.id}/details", cast_to=object)
            metrics = client.get("/metrics", cast_to=str)
        calls = upstream.all_calls()
    assert all(calls[f"q{i}"] == 1 for i in range(0, 1000, 2))  # the second run reused these
    assert all(calls[f"q{i}"] == 2 for i in range(1, 1000, 2))  # and called for these
    assert all(second[f"r{i}"] != first[f"r{i}"] for i in range(0, 1000, 2))  # new message ids
    assert isinstance(details, dict)
    assert details["reused_answers"] == 500
    assert 'batchd_answers_reused_total{backend="up"} 500.0' in metrics


def test_a_different_param_is_a_different_answer(start_server: StartServer) -> None:
    with serve_upstream() as upstream:
        server = start_server(backends=[_backend(upstream, "always")])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            _run(client, _requests(4))
            _run(client, _requests(4, max_tokens=33))
            _run(client, _requests(4, system="be brief"))
            _run(client, _requests(4))  # as the first: every answer reused, at any temperature
    assert set(upstream.all_calls().values()) == {3}


def test_reuse_is_off_by_default(start_server: StartServer) -> None:
    with serve_upstream() as upstream:
        backend = _backend(upstream, "off")
        del backend["reuse_answers"]
        server = start_server(backends=[backend])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            _run(client, _requests(4))
            _run(client, _requests(4))
    assert set(upstream.all_calls().values()) == {2}


def test_reuse_never_crosses_workspaces(start_server: StartServer, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"a": "team-a", "b": "team-b"})
    with serve_upstream() as upstream:
        server = start_server(backends=[_backend(upstream, "always")])
        for name in ("a", "b", "a"):
            with anthropic.Anthropic(base_url=server.url, api_key=keys[name]) as client:
                _run(client, _requests(4))
    assert set(upstream.all_calls().values()) == {2}  # once per workspace


def test_a_reused_answer_counts_in_usage_as_the_answer_it_repeats(
    start_server: StartServer,
) -> None:
    with serve_upstream() as upstream:
        server = start_server(backends=[_backend(upstream, "always")])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            usage = []
            for _ in range(2):
                batch = client.messages.batches.create(requests=_requests(4))
                assert wait_ended(client, batch.id).request_counts.succeeded == 4
                path = f"/v1/messages/batches/{batch.id}/usage"
                usage.append(client.get(path, cast_to=object))
        assert upstream.all_calls() == {f"q{i}": 1 for i in range(4)}  # the second: all reused
    first, second = usage
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert first["input_tokens"] > 0
    assert [m["requests"] for m in second["models"]] == [4]
    for figure in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        assert second[figure] == first[figure], figure
