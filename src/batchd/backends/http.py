"""The HTTP client every networked backend shares: pooled keep-alive connections, errors mapped.

``UpstreamHttp.post`` answers the status, headers and body of any HTTP answer; a timeout
becomes a retryable 504 ``timeout_error`` and a failed connection a retryable 502
``api_error``. What a non-2xx answer means is the backend's business (its wire format).

A call has one deadline, from its start to the last byte of the answer (``call_timeout``):
the backend's ``timeout_seconds`` where set, else one that grows with the output asked
for. There is no idle-read timeout: a server that answers without streaming sends nothing
until its whole answer is ready, which for 300,000 output tokens can take hours.

The client is an ``asyncio.Protocol`` per connection with ``httptools`` (the parser uvicorn
uses) reading the answers. Fan-out is batchd's hottest path, and a general-purpose client
costs too much there: at 1,024 calls in flight on 2 cores, aiohttp spent about 165 us of CPU
per call (aiosonic 162, rnet 168 over its threads), this client about 40 (bench/ fan-out).
It speaks only what upstream calls need: one POST at a time per connection, bodies by
content-length, chunks or end of stream, gzip and deflate answers, http and https.

The upstream key never leaves batchd: some servers quote the key they were sent in a
refusal ("Incorrect API key provided: sk-..."), and error messages travel on to clients,
results and logs, so the key is cut out of every non-2xx body here.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import ssl
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from batchd.config import BackendConfig
from batchd.errors import UpstreamError

# Who wants to see the headers of the answers of the current call (the pacer reads the
# upstream's rate-limit headers): set by backends/runner.py around each upstream call.
ANSWER_HEADERS: contextvars.ContextVar[Callable[[Mapping[str, str]], None] | None] = (
    contextvars.ContextVar("answer_headers", default=None)
)


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """The delay an upstream asks for: ``retry-after-ms``, then ``retry-after`` (s or date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


_VERDICTS = {"true": True, "false": False}

DEFAULT_TIMEOUT_SECONDS = 600.0
# The slowest output a call is waited for by default: a busy server generating many
# sequences at once can give each one 10-30 tokens a second.
SLOWEST_TOKENS_PER_SECOND = 10.0


def call_timeout(configured: float | None, max_tokens: int | None) -> float:
    """The seconds one call may take: ``configured`` where set; else 600, or the time
    ``max_tokens`` take at SLOWEST_TOKENS_PER_SECOND where that is longer."""
    if configured is not None:
        return configured
    return max(DEFAULT_TIMEOUT_SECONDS, (max_tokens or 0) / SLOWEST_TOKENS_PER_SECOND)


def error_from_answer(
    status: int,
    headers: Mapping[str, str],
    now: float,
    *,
    message: str | None,
    named_type: object = None,
) -> UpstreamError:
    """The error for an upstream's non-2xx answer, whatever its wire format: the type, the
    client's status and the retry verdict by ``UpstreamError.answered``, believing the
    upstream's own ``x-should-retry`` and ``retry-after``."""
    return UpstreamError.answered(
        status,
        message,
        named_type=named_type,
        should_retry=_VERDICTS.get(headers.get("x-should-retry", "")),
        retry_after=retry_after_seconds(headers, now),
    )


class _Stale(ConnectionError):
    """A kept-alive connection closed before any byte of the answer came back."""


class _Connection(asyncio.Protocol):
    """One connection; at most one request on it at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._started = False
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._done = False
        self._keep_alive = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._done:  # nothing was asked: not a connection to keep
            self.close()
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._waiter is None or self._waiter.done():
            return
        if self._started and self._ends_with_stream():
            self.on_message_complete()
        elif not self._started:
            self._fail(_Stale("connection closed before the answer"))
        else:
            self._fail(ConnectionError(f"connection lost mid-answer: {exc or 'closed'}"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # valid only until the end

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._done = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        body = b"".join(self._chunks)
        encoding = self._headers.get("content-encoding")
        try:
            if encoding == "gzip":
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                body = zlib.decompress(body)
        except zlib.error as exc:
            waiter.set_exception(ConnectionError(f"undecodable {encoding} answer: {exc}"))
            return
        waiter.set_result(HttpAnswer(self._parser.get_status_code(), self._headers, body))

    # -- use
    def send(self, data: bytes, waiter: asyncio.Future[HttpAnswer]) -> None:
        assert self.transport is not None
        self._waiter, self._started, self._done, self._keep_alive = waiter, False, False, False
        self._headers, self._chunks = {}, []
        self.transport.write(data)

    @property
    def reusable(self) -> bool:
        return self.open and self._done and self._keep_alive

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _ends_with_stream(self) -> bool:
        return "content-length" not in self._headers and "transfer-encoding" not in self._headers

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    head: bytes  # the request line and the fixed headers, up to content-length


class _Pool:
    """Connections to one origin: idle ones reused last-in first-out, at most ``limit`` open."""

    def __init__(self, target: _Target, limit: int, tls: ssl.SSLContext | None) -> None:
        self._target = target
        self._limit = limit
        self._tls = tls
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.open:
                conn.reused = True
                return conn
            self._open -= 1
        return None

    async def acquire(self) -> _Connection:
        """A new connection, or at the limit the next one a caller is done with (callers
        try ``take_idle`` first)."""
        if self._open >= self._limit:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over(waiter.result())
                raise
            if handed is not None:
                handed.reused = True
                return handed
        self._open += 1
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection,
                self._target.host,
                self._target.port,
                ssl=self._tls,
                server_hostname=self._target.host if self._tls else None,
            )
        except BaseException:
            self._open -= 1
            self._hand_over(None)
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        if conn.reusable:
            self._hand_over(conn)
            return
        conn.close()
        self._open -= 1
        self._hand_over(None)

    def _hand_over(self, conn: _Connection | None) -> None:
        """Give ``conn`` (or, when None, the right to open one) to the first waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._open = 0


def _expire(waiter: asyncio.Future[HttpAnswer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


REDACTED = b"[redacted]"


def _secrets_in(headers: Mapping[str, str]) -> list[bytes]:
    """The credentials among the headers batchd sends upstream."""
    secrets = []
    for name, value in headers.items():
        if name.lower() == "x-api-key":
            secrets.append(value)
        elif name.lower() == "authorization":
            secrets.append(value.partition(" ")[2] or value)
    return [secret.encode() for secret in secrets if secret]


def _redacted(answer: HttpAnswer, secrets: list[bytes]) -> HttpAnswer:
    body = answer.body
    for secret in secrets:
        if secret in body:
            body = body.replace(secret, REDACTED)
    return answer if body is answer.body else HttpAnswer(answer.status, answer.headers, body)


class UpstreamHttp:
    """Pooled keep-alive connections per origin, at most ``max_connections`` open to each."""

    def __init__(
        self,
        *,
        max_connections: int,
        timeout_seconds: float | None,
        headers: Mapping[str, str],
    ) -> None:
        self._limit = max_connections
        self._timeout = timeout_seconds
        self._headers = "".join(
            f"{name}: {value}\r\n"
            for name, value in headers.items()
            if name.lower() not in ("host", "content-length")
        ).encode("latin-1")
        self._secrets = _secrets_in(headers)
        self._targets: dict[str, tuple[_Target, _Pool]] = {}
        self._tls: ssl.SSLContext | None = None
        self._started = False

    @classmethod
    def for_backend(cls, config: BackendConfig, headers: Mapping[str, str]) -> UpstreamHttp:
        """The client of one backend: as many connections as it may have calls at once
        (an interactive call's extra slot included: backends/pacing.py)."""
        return cls(
            max_connections=config.max_concurrency + (1 if config.interactive_extra_slot else 0),
            timeout_seconds=config.timeout_seconds,
            headers=headers,
        )

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        for _, pool in self._targets.values():
            pool.close()
        self._targets.clear()
        self._started = False

    async def post(self, url: str, data: bytes, *, max_tokens: int | None = None) -> HttpAnswer:
        """POST ``data`` (JSON) to ``url``, a request for up to ``max_tokens`` of output;
        raise UpstreamError only when no answer came."""
        assert self._started, "backend not started"
        target, pool = self._targets.get(url) or self._target(url)
        request = b"%scontent-length: %d\r\n\r\n%s" % (target.head, len(data), data)
        timeout = call_timeout(self._timeout, max_tokens)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            try:
                answer = await self._exchange(pool, request, deadline, fresh=False)
            except _Stale:
                # The upstream closed a kept-alive connection as it was reused: the
                # request never reached it, so one more try on a new connection.
                answer = await self._exchange(pool, request, deadline, fresh=True)
        except TimeoutError:
            raise UpstreamError(
                f"upstream timed out after {timeout:g} s", upstream_status=504
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(
                f"upstream connection failed: {exc.__class__.__name__}: {exc}",
                upstream_status=502,
            ) from None
        if (observe := ANSWER_HEADERS.get()) is not None:
            observe(answer.headers)
        return _redacted(answer, self._secrets) if answer.status >= 300 else answer

    async def _exchange(
        self, pool: _Pool, request: bytes, deadline: float, *, fresh: bool
    ) -> HttpAnswer:
        conn = None if fresh else pool.take_idle()
        if conn is None:  # waiting for a connection or opening one: rarer, so a full timeout
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[HttpAnswer] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            conn.send(request, waiter)
            answer = await waiter
        except _Stale:
            pool.release(conn)
            if conn.reused:
                raise
            raise ConnectionError("connection closed before the answer") from None
        except BaseException:
            conn.close()
            pool.release(conn)
            raise
        finally:
            timer.cancel()
        pool.release(conn)
        return answer

    def _target(self, url: str) -> tuple[_Target, _Pool]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(
                f"unsupported upstream URL {url!r}", upstream_status=500, retryable=False
            )
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        default_port = port == (443 if tls else 80)
        authority = parts.hostname if default_port else f"{parts.hostname}:{port}"
        if ":" in parts.hostname:  # IPv6 literal
            authority = f"[{parts.hostname}]" if default_port else f"[{parts.hostname}]:{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n").encode("latin-1") + self._headers
        target = _Target(parts.hostname, port, tls, head)
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        origin = (target.host, target.port, tls)
        pool = next(
            (p for t, p in self._targets.values() if (t.host, t.port, t.tls) == origin), None
        )
        if pool is None:
            pool = _Pool(target, self._limit, self._tls if tls else None)
        self._targets[url] = (target, pool)
        return target, pool
