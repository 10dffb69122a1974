"""One key holder cannot stall, starve or flood the others (issue 19, round 2): bounded
max_tokens, bounded PDF extraction, byte budgets for bodies, bounded connections, and no
recursion over client JSON."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from batchd.api.serving import (
    RESERVED_FILES,
    connection_cap,
    raise_open_file_limit,
    serving_options,
)
from tests.conftest import StartServer, mock_request, wait_ended
from tests.support import rawhttp
from tests.support.keys import make_keys
from tests.support.process import run_batchd
from tests.support.server import RunningServer, make_settings

# --- max_tokens: bounded per backend ------------------------------------------------------


def test_a_max_tokens_over_the_backend_limit_is_that_requests_error(
    client: anthropic.Anthropic,
) -> None:
    batch = client.messages.batches.create(
        requests=[
            mock_request("huge", max_tokens=10**18),
            mock_request("fine"),
        ]
    )
    wait_ended(client, batch.id)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["fine"].type == "succeeded"
    assert results["huge"].type == "errored"
    assert results["huge"].error.error.type == "invalid_request_error"
    assert "max_tokens" in results["huge"].error.error.message


def test_a_max_tokens_over_the_limit_is_refused_on_messages(start_server: StartServer) -> None:
    server = start_server(
        backends=[{"name": "m", "kind": "mock", "models": ["m"], "max_output_tokens": 100}]
    )
    with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client:
        ok = client.messages.create(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.type == "message"
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(
                model="m", max_tokens=101, messages=[{"role": "user", "content": "hi"}]
            )
    assert "max_tokens" in refused.value.message


# --- JSON nested deep: 400, never a recursion error ------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages"])
@pytest.mark.parametrize("depth", [600, 5_000])  # through msgspec's decoder; past it
def test_deeply_nested_content_is_a_400(server: RunningServer, path: str, depth: int) -> None:
    inner = "[" * depth + '"x"' + "]" * depth  # written by hand: json.dumps would recurse
    body = (
        '{"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", '
        f'"input": {{"v": {inner}}}}}]}}, {{"role": "user", "content": "go on"}}]}}'
    )
    answer = httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "nested too deeply" in answer.json()["error"]["message"]


# --- connections: an early answer ends a slow body; a cap; the open-file limit ------------


def _unauthorised_upload(sock: socket.socket) -> rawhttp.RawReply:
    """A create with a wrong key that declares a body of 10 MiB and sends a few bytes."""
    headers = {"x-api-key": "sk-wrong", "content-type": "application/json"}
    sock.sendall(
        rawhttp.head(
            "POST", "/v1/messages/batches", {**headers, "Content-Length": str(10 * 1024 * 1024)}
        )
        + b'{"req'
    )
    return rawhttp.read_reply(sock)


@pytest.fixture
def keyed(start_server: StartServer, tmp_path: Path) -> Callable[..., RunningServer]:
    make_keys(tmp_path / "batchd.db", {"alice": "team-a"})
    return start_server


def test_a_body_trickled_after_a_401_is_cut_off_in_time(keyed: StartServer) -> None:
    server = keyed(drain_seconds=0.2, engine=False)
    with rawhttp.connect(server.port, timeout=10) as sock:
        reply = _unauthorised_upload(sock)
        sock.sendall(b"x")  # one more byte: uvicorn alone would wait for the rest forever
        closed = rawhttp.closed_by_server(sock)  # within the drain time, not the 10 s timeout

    assert reply.status == 401
    assert closed


def test_a_body_sent_fast_after_a_401_is_cut_off_in_size(keyed: StartServer) -> None:
    server = keyed(drain_bytes=64 * 1024, engine=False)
    with rawhttp.connect(server.port, timeout=10) as sock:
        reply = _unauthorised_upload(sock)
        with contextlib.suppress(OSError):  # the server may hang up while we are writing
            for _ in range(64):
                sock.sendall(b" " * 16 * 1024)  # 1 MiB of the 10 declared
        closed = rawhttp.closed_by_server(sock)

    assert reply.status == 401
    assert closed


def test_a_body_that_ends_in_time_keeps_its_connection(keyed: StartServer) -> None:
    server = keyed(engine=False)
    with rawhttp.connect(server.port, timeout=10) as sock:
        sock.sendall(
            rawhttp.head(
                "POST",
                "/v1/messages/batches",
                {
                    "x-api-key": "sk-wrong",
                    "content-type": "application/json",
                    "Content-Length": "4",
                },
            )
        )
        first = rawhttp.read_reply(sock)
        sock.sendall(b"{}  " + rawhttp.head("GET", "/v1/models", {"x-api-key": "sk-wrong"}))
        second = rawhttp.read_reply(sock)

    assert (first.status, second.status) == (401, 401)


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        lowered = min(soft, hard, 512)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        raised = raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        assert raised == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_are_capped_below_the_open_file_limit(tmp_path: Path) -> None:
    settings = make_settings(str(tmp_path / "b.db"), max_connections=10_000)
    assert connection_cap(settings, open_files=1024) == 1024 - RESERVED_FILES
    assert serving_options(settings)["limit_concurrency"] <= 10_000


def test_requests_over_the_connection_cap_get_503(keyed: StartServer) -> None:
    server = keyed(engine=False, max_connections=RESERVED_FILES + 1)  # cap: the setting
    idle = [rawhttp.connect(server.port) for _ in range(RESERVED_FILES + 2)]
    try:
        with rawhttp.connect(server.port) as sock:
            sock.sendall(rawhttp.head("GET", "/v1/models", {"x-api-key": "sk-wrong"}))
            reply = rawhttp.read_reply(sock)
    finally:
        for sock in idle:
            sock.close()

    assert reply.status == 503


# --- bodies: one byte budget per key and across keys, on every route that reads one --------

MESSAGES, COUNT, BATCHES = "/v1/messages", "/v1/messages/count_tokens", "/v1/messages/batches"


def _post(port: int, path: str, key: str, size: int, *, send: int | None = None) -> socket.socket:
    """A POST declaring ``size`` bytes of body and sending ``send`` of them (all by default)."""
    sock = rawhttp.connect(port)
    headers = {"x-api-key": key, "content-type": "application/json", "Content-Length": str(size)}
    sock.sendall(rawhttp.head("POST", path, headers) + b" " * (size if send is None else send))
    return sock


def _refused_while_held(
    port: int, held: Callable[[], socket.socket], probe: Callable[[], rawhttp.RawReply]
) -> rawhttp.RawReply:
    """Hold a stalled body, and probe until the probe is refused (the stalled body is charged
    once the server has read its head: the first probes may come before that)."""
    stalled = held()
    try:
        deadline = time.monotonic() + 30
        while (reply := probe()).status != 429:
            assert time.monotonic() < deadline, f"never refused: {reply.status} {reply.body!r}"
            time.sleep(0.02)
        return reply
    finally:
        stalled.close()


def _answer(port: int, path: str, key: str, size: int) -> rawhttp.RawReply:
    with _post(port, path, key, size) as sock:
        return rawhttp.read_reply(sock)


@pytest.fixture
def two_keys(tmp_path: Path) -> dict[str, str]:
    return make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})


@pytest.mark.parametrize("probe_path", [MESSAGES, COUNT, BATCHES])
def test_a_key_holds_at_most_its_byte_budget_of_bodies(
    start_server: StartServer, two_keys: dict[str, str], probe_path: str
) -> None:
    server = start_server(
        engine=False, max_body_bytes_per_key=1_000_000, max_message_body_bytes=600_000
    )
    alice, bob = two_keys["alice"], two_keys["bob"]

    refused = _refused_while_held(
        server.port,
        lambda: _post(server.port, MESSAGES, alice, 600_000, send=10),
        lambda: _answer(server.port, probe_path, alice, 500_000),
    )
    other_key = _answer(server.port, probe_path, bob, 500_000)

    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "request bodies" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"]
    assert other_key.status == 400  # read in full: the padding is no JSON, but not refused


def test_all_keys_together_hold_at_most_the_servers_byte_budget(
    start_server: StartServer, two_keys: dict[str, str]
) -> None:
    server = start_server(engine=False, max_body_bytes_total=1_000_000)
    alice, bob = two_keys["alice"], two_keys["bob"]

    refused = _refused_while_held(
        server.port,
        lambda: _post(server.port, BATCHES, alice, 600_000, send=10),
        lambda: _answer(server.port, COUNT, bob, 500_000),
    )

    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "server is holding" in refused.json()["error"]["message"]
    assert _answer(server.port, COUNT, bob, 500_000).status == 400  # alice's body let go


@pytest.mark.parametrize("path", [MESSAGES, COUNT])
def test_messages_bodies_have_a_smaller_limit_than_creates(
    start_server: StartServer, path: str
) -> None:
    server = start_server(engine=False, max_message_body_bytes=100_000)

    too_large = _answer(server.port, path, "sk", 100_001)
    create = _answer(server.port, BATCHES, "sk", 100_001)

    assert too_large.status == 413
    assert too_large.json()["error"]["type"] == "request_too_large"
    assert create.status == 400  # read in full (the padding is no JSON)


def test_a_create_holds_its_body_about_once(tmp_path: Path) -> None:
    """The body is read into one buffer, its requests are views into it, and nothing copies
    it whole on the way to the database (a 200 MiB create: docs/reliability.md)."""
    pad = "x" * 2000
    requests = [mock_request(f"r{i}", metadata={"user_id": pad}) for i in range(32_000)]
    body = json.dumps({"requests": requests}).encode()
    mib = len(body) / 2**20
    with run_batchd(tmp_path, "--no-engine") as server:
        server.reset_peak_rss()
        idle = server.rss_mib()
        with rawhttp.connect(server.port, timeout=120) as sock:
            head = {"x-api-key": "sk", "content-type": "application/json"}
            sock.sendall(rawhttp.head("POST", BATCHES, {**head, "Content-Length": str(len(body))}))
            sock.sendall(body)
            reply = rawhttp.read_reply(sock)
        growth = server.peak_rss_mib() - idle

    assert reply.status == 200, reply.body
    assert growth < 1.5 * mib, f"{growth:.0f} MiB for a body of {mib:.0f} MiB"
