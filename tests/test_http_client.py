"""The upstream HTTP client (batchd.backends.http) against a raw HTTP server on loopback.

The server is scripted byte by byte, so that each way an upstream can answer (kept alive or
not, chunked, compressed, cut off, malformed, never) reaches the client as it would on the wire.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import uvloop

from batchd.backends.http import UpstreamHttp
from batchd.errors import UpstreamError

# How the server answers one request: (reader, writer, request number) -> keep the connection?
Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


def response(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


@dataclass
class RawServer:
    answer: Answer
    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                if not await self.answer(reader, writer, len(self.requests)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        finally:
            self.open_now -= 1
            writer.close()


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[RawServer]:
    server = RawServer(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/v1/messages"
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def client(max_connections: int = 8, deadline: float = 10) -> AsyncIterator[UpstreamHttp]:
    http = UpstreamHttp(
        max_connections=max_connections,
        timeout_seconds=deadline,
        headers={"content-type": "application/json", "x-api-key": "upstream-key"},
    )
    await http.start()
    try:
        yield http
    finally:
        await http.close()


def ok(body: bytes = b'{"ok":true}', *headers: str) -> Answer:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(response(body, *headers))
        await writer.drain()
        return True

    return answer


async def test_request_on_the_wire_and_connection_kept_alive() -> None:
    async with raw_server(ok()) as server, client() as http:
        for i in range(5):
            answer = await http.post(server.url, b'{"n":%d}' % i)
            assert (answer.status, answer.body) == (200, b'{"ok":true}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/messages HTTP/1.1\r\n")
    assert f"host: {server.url.split('/')[2]}\r\n".encode() in first
    assert b"x-api-key: upstream-key\r\n" in first
    assert first.endswith(b'content-length: 7\r\n\r\n{"n":0}')


async def test_no_more_connections_than_the_limit() -> None:
    async def slow(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.02)
        writer.write(response(b"%d" % n))
        await writer.drain()
        return True

    async with raw_server(slow) as server, client(max_connections=4) as http:
        answers = await asyncio.gather(*(http.post(server.url, b"{}") for _ in range(40)))
    assert sorted(int(a.body) for a in answers) == list(range(1, 41))
    assert server.most_open == 4
    assert server.connections == 4


async def test_headers_chunked_and_gzip_answers() -> None:
    packed = gzip.compress(b'{"compressed":true}')

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(
                b"HTTP/1.1 429 Too Many Requests\r\ntransfer-encoding: chunked\r\n"
                b'Retry-After: 7\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
            )
        else:
            writer.write(response(packed, "content-encoding: gzip"))
        await writer.drain()
        return True

    async with raw_server(answer) as server, client() as http:
        limited = await http.post(server.url, b"{}")
        compressed = await http.post(server.url, b"{}")
    assert (limited.status, limited.body, limited.headers["retry-after"]) == (429, b'{"a":1}', "7")
    assert compressed.body == b'{"compressed":true}'
    assert server.connections == 1


async def test_answer_delimited_by_close_then_a_new_connection() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end %d" % n)
        await writer.drain()
        return False

    async with raw_server(answer) as server, client() as http:
        first = await http.post(server.url, b"{}")
        second = await http.post(server.url, b"{}")
    assert (first.body, second.body) == (b"until the end 1", b"until the end 2")
    assert server.connections == 2


async def test_kept_alive_connection_closed_by_the_upstream_is_retried_once() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(response(b"%d" % n))  # says nothing of closing, then closes
        await writer.drain()
        return False

    async with raw_server(answer) as server, client() as http:
        await http.post(server.url, b"{}")
        await asyncio.sleep(0.05)  # the close reaches the client while the connection idles
        again = await http.post(server.url, b"{}")
    assert again.body == b"2"
    assert len(server.requests) == 2  # the request reached the upstream once


async def test_reused_connection_dropped_before_any_answer_is_retried_on_a_new_one() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # hangs up on the second request without a byte of answer
        writer.write(response(b"%d" % n))
        await writer.drain()
        return True

    async with raw_server(answer) as server, client() as http:
        await http.post(server.url, b"{}")
        again = await http.post(server.url, b"{}")
    assert again.body == b"3"
    assert server.connections == 2


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ncut", "connection lost mid-answer"),
        (b"this is not HTTP\r\n\r\n", "malformed HTTP answer"),
        (b"", "connection closed before the answer"),
    ],
    ids=["cut-off", "malformed", "closed"],
)
async def test_broken_answers_are_retryable_502s(wire: bytes, expected: str) -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(wire)
        await writer.drain()
        return False

    async with raw_server(answer) as server, client() as http:
        with pytest.raises(UpstreamError) as caught:
            await http.post(server.url, b"{}")
    error = caught.value
    assert (error.upstream_status, error.error_type, error.retryable) == (502, "api_error", True)
    assert expected in error.message


async def test_refused_connection_is_a_retryable_502() -> None:
    async with raw_server(ok()) as server:
        url = server.url
    async with client() as http:
        with pytest.raises(UpstreamError) as caught:
            await http.post(url, b"{}")
    assert (caught.value.upstream_status, caught.value.retryable) == (502, True)
    assert "upstream connection failed" in caught.value.message


async def test_timeout_closes_the_connection_and_frees_its_place() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await reader.read()  # never answers; returns when the client hangs up
            return False
        writer.write(response(b"late"))
        await writer.drain()
        return True

    async with raw_server(answer) as server, client(max_connections=1, deadline=0.3) as http:
        with pytest.raises(UpstreamError) as caught:
            await http.post(server.url, b"{}")
        assert (caught.value.upstream_status, caught.value.error_type) == (504, "timeout_error")
        after = await http.post(server.url, b"{}")
    assert after.body == b"late"
    assert server.connections == 2


async def test_cancelled_call_frees_its_place() -> None:
    release, arrived = asyncio.Event(), asyncio.Event()

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            arrived.set()
            await release.wait()
            return False
        writer.write(response(b"next"))
        await writer.drain()
        return True

    async with raw_server(answer) as server, client(max_connections=1) as http:
        call = asyncio.create_task(http.post(server.url, b"{}"))
        await arrived.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        release.set()
        assert (await http.post(server.url, b"{}")).body == b"next"


def test_runs_on_uvloop() -> None:
    """``batchd serve`` runs on uvloop, whose transports are not asyncio's classes."""

    async def main() -> list[bytes]:
        async with raw_server(ok(b"uv")) as server, client() as http:
            return [(await http.post(server.url, b"{}")).body for _ in range(3)]

    assert uvloop.run(main()) == [b"uv"] * 3
