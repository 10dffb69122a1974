"""Limits on what one client can make the server hold: heads, bodies, time, uploads in flight.

The memory cases run against ``batchd serve`` as a child process and read its peak RSS
(``VmHWM``, reset before each case); each bound is generous, and says what it guards.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import StartServer, body_of, mock_request
from tests.support import rawhttp
from tests.support.keys import make_keys
from tests.support.process import ServerProcess, run_batchd

BATCHES = "/v1/messages/batches"
MIB = 1024 * 1024
LIMIT_MIB = 256  # the default max_body_bytes
OVERSIZE_MIB = int(os.environ.get("BATCHD_FUZZ_OVERSIZE_MIB", "300"))
# Figures of the last run, printed for docs/reliability.md (`pytest -s`).
FIGURES: dict[str, str] = {}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default size limits, one-second head and body timeouts, no engine."""
    env = {"BATCHD_BODY_IDLE_TIMEOUT_SECONDS": "1", "BATCHD_HEADER_TIMEOUT_SECONDS": "1"}
    with run_batchd(tmp_path_factory.mktemp("limits"), "--no-engine", env=env) as server:
        yield server
    for name, figure in FIGURES.items():
        print(f"limits: {name}: {figure}")  # noqa: T201


def peak_growth(server: ServerProcess, before: float) -> float:
    growth = server.peak_rss_mib() - before
    return round(growth, 1)


def start_measuring(server: ServerProcess) -> float:
    server.reset_peak_rss()
    return server.rss_mib()


def assert_envelope(reply: rawhttp.RawReply, status: int, error_type: str) -> None:
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["request_id"] == reply.headers["request-id"]


# --- the request head -------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"X-Pad: " + b"a" * 8000 + b"\r\n", id="many-header-lines"),
        pytest.param(b"a" * 8000, id="one-endless-header-line"),
    ],
)
def test_a_head_over_the_limit_gets_431_in_flat_memory(served: ServerProcess, line: bytes) -> None:
    before = start_measuring(served)
    with rawhttp.connect(served.port) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-First: " + b"b\r\n")
        sent = 0
        try:
            while sent < 200 * MIB:  # what an unbounded parser would hold
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = rawhttp.read_reply(sock)

    assert_envelope(reply, 431, "request_too_large")
    assert reply.headers["connection"] == "close"
    assert sent < 32 * MIB  # refused early (what was sent sat in socket buffers)
    growth = peak_growth(served, before)
    FIGURES[f"head {line[:5]!r}: sent before the 431, peak RSS growth"] = (
        f"{sent / 1024:.0f} KiB, {growth} MiB"
    )
    assert growth < 16


def test_a_large_head_under_the_limit_is_served_however_it_arrives(served: ServerProcess) -> None:
    """48 KiB of headers (64 KiB allowed), in 4 KiB writes: no part is counted twice."""
    lines = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(48))
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"
    with rawhttp.connect(served.port) as sock:
        for at in range(0, len(head), 4096):
            sock.sendall(head[at : at + 4096])
            time.sleep(0.005)  # separate reads on the server, most of the time
        reply = rawhttp.read_reply(sock)

    assert reply.status == 200


def test_a_head_that_never_ends_is_closed(served: ServerProcess) -> None:
    with rawhttp.connect(served.port, timeout=15) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Unfinished: ")

        assert rawhttp.closed_by_server(sock)  # header_timeout_seconds is 1 here


def test_a_connection_that_sends_nothing_is_closed(served: ServerProcess) -> None:
    with rawhttp.connect(served.port, timeout=15) as sock:
        assert rawhttp.closed_by_server(sock)


def test_a_slow_but_complete_head_is_served(served: ServerProcess) -> None:
    with rawhttp.connect(served.port) as sock:
        for piece in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n"):
            sock.sendall(piece)
            time.sleep(0.1)  # the whole head well within header_timeout_seconds (1 here)
        sock.sendall(b"\r\n")
        reply = rawhttp.read_reply(sock)

    assert reply.status == 200


# --- bodies -------------------------------------------------------------------------------


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def chunked(size: int) -> bytes:
    return chunk(b" " * size)


def post_head(extra: dict[str, str] | None = None) -> bytes:
    headers = {"Content-Type": "application/json", "x-api-key": "sk-test", **(extra or {})}
    return rawhttp.head("POST", BATCHES, headers)


def test_an_oversize_chunked_body_sent_fast_gets_413_in_bounded_memory(
    served: ServerProcess,
) -> None:
    before = start_measuring(served)
    piece = chunked(MIB)
    with rawhttp.connect(served.port, timeout=60) as sock:
        sock.sendall(post_head({"Transfer-Encoding": "chunked"}) + chunk(b'{"requests": ['))
        for _ in range(OVERSIZE_MIB):
            sock.sendall(piece)
        sock.sendall(b"0\r\n\r\n")
        reply = rawhttp.read_reply(sock)  # the client sees the 413 once it has sent it all

    assert_envelope(reply, 413, "request_too_large")
    growth = peak_growth(served, before)
    FIGURES[f"{OVERSIZE_MIB} MiB chunked body, fast: peak RSS growth"] = f"{growth} MiB"
    assert growth < LIMIT_MIB * 1.5  # the body up to the limit, no copy of it


def test_an_oversize_declared_body_sent_slowly_is_refused_at_once(served: ServerProcess) -> None:
    before = start_measuring(served)
    length = str(OVERSIZE_MIB * MIB)
    with rawhttp.connect(served.port, timeout=30) as sock:
        sock.sendall(post_head({"Content-Length": length}))
        sent = 0
        sock.settimeout(0.01)
        while True:  # keep trickling until the answer is there
            try:
                answer = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                answer = b""
            if answer:
                break
            sock.sendall(b" " * 65536)
            sent += 65536
            assert sent < 64 * MIB, "no answer while the body trickled in"
        sock.settimeout(30)
        reply = rawhttp.read_reply(sock)

    assert_envelope(reply, 413, "request_too_large")
    growth = peak_growth(served, before)
    FIGURES[f"{OVERSIZE_MIB} MiB declared body, slow: sent before the 413, peak RSS growth"] = (
        f"{sent} bytes, {growth} MiB"
    )
    assert growth < 16


def test_a_chunked_body_trickled_past_the_limit_gets_413(served: ServerProcess) -> None:
    """Small chunks, each in its own write: the limit holds however the body is cut."""
    before = start_measuring(served)
    piece = chunked(16 * 1024) * 64  # 64 chunks of 16 KiB per write
    with rawhttp.connect(served.port, timeout=60) as sock:
        sock.sendall(post_head({"Transfer-Encoding": "chunked"}) + chunk(b'{"requests": ['))
        for _ in range(OVERSIZE_MIB):
            sock.sendall(piece)
        sock.sendall(b"0\r\n\r\n")
        reply = rawhttp.read_reply(sock)

    assert_envelope(reply, 413, "request_too_large")
    growth = peak_growth(served, before)
    FIGURES[f"{OVERSIZE_MIB} MiB in 16 KiB chunks: peak RSS growth"] = f"{growth} MiB"
    assert growth < LIMIT_MIB * 1.5


def test_a_body_that_stops_half_way_gets_408_and_its_memory_back(served: ServerProcess) -> None:
    partial = 64 * MIB
    start_measuring(served)
    with rawhttp.connect(served.port, timeout=30) as sock:
        sock.sendall(post_head({"Content-Length": str(2 * partial)}))
        sock.sendall(b" " * partial)  # then nothing more
        reply = rawhttp.read_reply(sock)  # body_idle_timeout_seconds is 1 here
        held = served.peak_rss_mib()
        closed = rawhttp.closed_by_server(sock)

    assert_envelope(reply, 408, "timeout_error")
    assert closed  # uvicorn's keep-alive timeout ends the idle connection
    after = served.rss_mib()
    FIGURES["64 MiB body then a stall: RSS held, then after the 408"] = (
        f"{held:.0f} / {after:.0f} MiB"
    )
    assert after < held - partial / MIB / 2  # the partial body was let go


def test_100000_tiny_requests_are_accepted_in_bounded_memory(served: ServerProcess) -> None:
    message = b'{"role":"user","content":"hi"}'
    item = (
        b'{"custom_id":"r%%d","params":{"model":"mock","max_tokens":1,"messages":[%s]}}' % message
    )
    body = b'{"requests":[' + b",".join(item % i for i in range(100_000)) + b"]}"
    before = start_measuring(served)
    with rawhttp.connect(served.port, timeout=120) as sock:
        sock.sendall(post_head({"Content-Length": str(len(body))}) + body)
        reply = rawhttp.read_reply(sock)

    assert reply.status == 200, reply.body
    assert reply.json()["request_counts"]["processing"] == 100_000
    growth = peak_growth(served, before)
    FIGURES["100,000 tiny requests (%.1f MiB): peak RSS growth" % (len(body) / MIB)] = (
        f"{growth} MiB"
    )
    assert growth < 400  # about 40x the body: parsed items, rows, the insert


# --- uploads in flight per key ------------------------------------------------------------


class StalledUpload:
    """A create-batch whose body stops half-way until ``finish`` sends the rest."""

    def __init__(self, port: int, key: str, custom_id: str) -> None:
        self.port, self.key = port, key
        self.body = json.dumps({"requests": [mock_request(custom_id)]}).encode()
        self.sock = self._start()

    def _start(self) -> socket.socket:
        sock = rawhttp.connect(self.port)
        headers = {"Content-Length": str(len(self.body)), "x-api-key": self.key}
        sock.sendall(post_head(headers) + self.body[:10])
        return sock

    def answered(self) -> bool:
        """Whether the server has answered already (it refused this upload)."""
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(timeout)

    def restart(self) -> None:
        self.sock.close()
        self.sock = self._start()

    def finish(self) -> rawhttp.RawReply:
        with self.sock:
            self.sock.sendall(self.body[10:])
            return rawhttp.read_reply(self.sock)


def create(port: int, key: str, custom_id: str) -> rawhttp.RawReply:
    body = json.dumps({"requests": [mock_request(custom_id)]}).encode()
    with rawhttp.connect(port) as sock:
        sock.sendall(post_head({"Content-Length": str(len(body)), "x-api-key": key}) + body)
        return rawhttp.read_reply(sock)


def stalled_uploads(port: int, key: str, n: int) -> list[StalledUpload]:
    """``n`` uploads holding every slot of ``key``: the next create gets 429.

    A probe create can race a stalled upload to a slot; the loser of that race is
    answered 429 at once, so it is started again until the probes are the ones refused.
    """
    stalled = [StalledUpload(port, key, f"s{i}") for i in range(n)]
    deadline = time.monotonic() + 30
    while True:
        refused = create(port, key, "probe").status == 429
        lost = [upload for upload in stalled if upload.answered()]
        if refused and not lost:
            return stalled
        for upload in lost:
            upload.restart()
        assert time.monotonic() < deadline, "the stalled uploads never took their slots"
        time.sleep(0.02)


def test_clients_that_hang_up_mid_body_give_their_slots_back(served: ServerProcess) -> None:
    stalled = stalled_uploads(served.port, "sk-test", 4)  # every slot of the open tenant
    for upload in stalled:
        upload.sock.close()

    deadline = time.monotonic() + 10
    while (reply := create(served.port, "sk-test", "after")).status == 429:
        assert time.monotonic() < deadline, "the slots of closed connections were kept"
        time.sleep(0.02)

    assert reply.status == 200
    assert "Traceback" not in served.log()  # a client going away is no server error


def test_a_key_may_upload_only_so_many_batches_at_once(
    start_server: StartServer, two_keys: dict[str, str]
) -> None:
    server = start_server(max_concurrent_uploads_per_key=2)
    alice, bob = two_keys["alice"], two_keys["bob"]
    stalled = stalled_uploads(server.port, alice, 2)

    refused = create(server.port, alice, "third")
    other_key = create(server.port, bob, "bobs")
    finished = [upload.finish() for upload in stalled]
    after = create(server.port, alice, "later")

    assert_envelope(refused, 429, "rate_limit_error")
    assert refused.headers["retry-after"] == "1"
    assert "2 batch uploads in progress" in refused.json()["error"]["message"]
    assert other_key.status == 200
    assert [reply.status for reply in finished] == [200, 200]
    assert after.status == 200


def test_open_mode_counts_every_caller_as_one(start_server: StartServer) -> None:
    server = start_server(max_concurrent_uploads_per_key=1)
    [stalled] = stalled_uploads(server.port, "sk-one", 1)

    refused = create(server.port, "sk-another", "x")
    stalled.finish()

    assert_envelope(refused, 429, "rate_limit_error")


def test_a_refused_upload_frees_no_slot_it_never_took(start_server: StartServer) -> None:
    server = start_server(max_concurrent_uploads_per_key=1)
    [stalled] = stalled_uploads(server.port, "sk-a", 1)
    for _ in range(3):
        assert create(server.port, "sk-a", "x").status == 429

    assert stalled.finish().status == 200
    assert create(server.port, "sk-a", "y").status == 200


@pytest.fixture
def two_keys(tmp_path: Path) -> dict[str, str]:
    return make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})


def test_the_sdk_sees_the_413_of_an_oversize_upload(start_server: StartServer) -> None:
    """The server answers at once and reads the rest of the body away, so a client that
    writes its whole body before reading (as the SDK does) still gets the answer."""
    server = start_server(max_body_bytes=100_000, engine=False)
    requests = [mock_request(f"r{i}", "x" * 1000) for i in range(1000)]  # about 1.1 MB

    client = anthropic.Anthropic(base_url=server.url, api_key="sk", max_retries=0)
    with client, pytest.raises(anthropic.APIStatusError) as raised:
        client.messages.batches.create(requests=requests)

    assert raised.value.status_code == 413
    assert body_of(raised.value)["error"]["type"] == "request_too_large"
