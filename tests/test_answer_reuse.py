"""Answer reuse (batchd's own, a backend's ``reuse_answers``): a request whose canonical params
match one that already succeeded on that backend in the same workspace is answered from the
stored result, without an upstream call; "deterministic" does so for temperature 0 only (and
embeddings). Both faces: Messages batches through the ``anthropic`` SDK, OpenAI batches through
the ``openai`` SDK."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anthropic
import openai
from anthropic.types.messages.batch_create_params import Request
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.keys import make_keys
from tests.support.openai_upstream import FakeOpenAI, serve_openai
from tests.support.server import RunningServer
from tests.support.upstream import (
    FakeUpstream,
    first_attempts,
    invalid_request,
    serve_upstream,
    upstream_backend,
)
from tests.test_openai_face import EMBEDDINGS, chat_line, lines_of, run_batch, sdk


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
    assert 'batchd_answers_reused_total{backend="up",dialect="anthropic"} 500.0' in metrics


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


# -- the OpenAI face ------------------------------------------------------------------------


def _openai_backend(upstream: FakeOpenAI, reuse: str) -> dict[str, Any]:
    return {"name": "up", "kind": "openai", "base_url": upstream.url, "models": ["up-*"],
            "max_concurrency": 64, "reuse_answers": reuse}  # fmt: skip


def _chat_lines(n: int, user: str) -> list[dict[str, Any]]:
    """Even lines at temperature 0, odd ones at 0.7; ``user`` names the caller, not the answer."""
    return [
        chat_line(f"r{i}", f"q{i}", model="up-chat", temperature=0 if i % 2 == 0 else 0.7,
                  user=user)
        for i in range(n)
    ]  # fmt: skip


def _completions(client: openai.OpenAI, lines: list[dict[str, Any]]) -> dict[str, ChatCompletion]:
    batch = run_batch(client, lines)
    assert batch.request_counts is not None
    assert batch.request_counts.completed == len(lines)
    output = lines_of(client, batch.output_file_id)
    return {k: ChatCompletion.model_validate(v["response"]["body"]) for k, v in output.items()}


def test_a_resubmitted_openai_batch_calls_upstream_only_for_what_is_deterministic(
    start_server: StartServer,
) -> None:
    with serve_openai() as upstream:
        server = start_server(backends=[_openai_backend(upstream, "deterministic")])
        with sdk(server) as client:
            first = _completions(client, _chat_lines(20, "u1"))
            second = _completions(client, _chat_lines(20, "u2"))
            metrics = client.get(f"{server.url}/metrics", cast_to=str)
    assert [upstream.calls(f"q{i}") for i in range(20)] == [1, 2] * 10
    for i in range(0, 20, 2):  # the same answer, under a new id
        assert second[f"r{i}"].choices == first[f"r{i}"].choices
        assert second[f"r{i}"].usage == first[f"r{i}"].usage
        assert second[f"r{i}"].id != first[f"r{i}"].id
        assert second[f"r{i}"].id.startswith("chatcmpl-")
    assert 'batchd_answers_reused_total{backend="up",dialect="openai"} 10.0' in metrics


def test_an_embeddings_batch_submitted_again_is_answered_from_the_stored_vectors(
    start_server: StartServer,
) -> None:
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": EMBEDDINGS,
         "body": {"model": "up-embed", "input": f"text {i}"}}
        for i in range(10)
    ]  # fmt: skip
    with serve_openai() as upstream:
        server = start_server(backends=[_openai_backend(upstream, "deterministic")])
        with sdk(server) as client:
            runs = []
            for _ in range(2):
                batch = run_batch(client, lines, EMBEDDINGS)
                output = lines_of(client, batch.output_file_id)
                runs.append({k: v["response"]["body"] for k, v in output.items()})
    assert len(upstream.requests("/embeddings")) == 10  # the second run: all reused
    first, second = runs
    assert second == first
    for body in second.values():
        CreateEmbeddingResponse.model_validate(body)


def test_the_two_faces_keep_their_answers_apart(start_server: StartServer) -> None:
    """A Messages request and an OpenAI chat line with the same JSON params: each face its
    own answer (the upstream called once for each), each reused on its own face."""
    with serve_upstream() as upstream:
        server = start_server(backends=[_backend(upstream, "always")])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as messages:
            request = mock_request("r0", "q0", model="claude-1", max_tokens=16)
            _run(messages, [request])
        with sdk(server) as client:
            line = chat_line("r0", "q0", model="claude-1")
            assert line["body"] == request["params"]
            runs = [_completions(client, [line]) for _ in range(2)]
    assert upstream.calls("q0") == 2
    assert runs[1]["r0"].choices == runs[0]["r0"].choices


# -- identical requests in flight together ----------------------------------------------------


def _in_flight(client: anthropic.Anthropic) -> int:
    """The slots of backend ``up`` held now: its requests claimed and not yet finished."""
    metrics = client.get("/metrics", cast_to=str)
    [value] = re.findall(r'^batchd_backend_in_flight\{backend="up"\} (\S+)$', metrics, re.M)
    return int(float(value))


def _run_held(
    upstream: FakeUpstream, server: RunningServer, n: int, running: int
) -> tuple[int, int, object]:
    """A batch of ``n`` identical temperature-0 requests, claimed while the upstream holds its
    calls, released once ``running`` of them are in flight. The batch's (succeeded, errored)
    counts and its details."""
    requests = [mock_request(f"r{i}", "same", model="claude-1", temperature=0) for i in range(n)]
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=requests)
        wait_until(lambda: _in_flight(client) == running, "the requests were not all claimed")
        upstream.release()
        counts = wait_ended(client, batch.id).request_counts
        details = client.get(f"/v1/messages/batches/{batch.id}/details", cast_to=object)
    return counts.succeeded, counts.errored, details


def test_identical_requests_in_flight_together_call_the_upstream_once(
    start_server: StartServer, held: FakeUpstream
) -> None:
    server = start_server(backends=[_backend(held, "deterministic")])
    succeeded, errored, details = _run_held(held, server, 3, running=3)
    assert held.calls("same") == 1  # the other two waited for its answer
    assert (succeeded, errored) == (3, 0)
    assert isinstance(details, dict)
    assert details["reused_answers"] == 2


def test_when_the_first_of_identical_requests_fails_the_next_one_calls(
    start_server: StartServer,
) -> None:
    with serve_upstream(faults=first_attempts(1, invalid_request())) as upstream:
        upstream.hold()
        server = start_server(backends=[_backend(upstream, "deterministic")])
        # the first call fails at once (faults pass the hold): the other two in flight
        succeeded, errored, details = _run_held(upstream, server, 3, running=2)
    assert upstream.calls("same") == 2  # the failed first, then one of those waiting
    assert (succeeded, errored) == (2, 1)
    assert isinstance(details, dict)
    assert details["reused_answers"] == 1
