"""uvicorn's httptools protocol, with the two bounds on the request head it lacks.

uvicorn's httptools parser keeps every header line it is sent, so one connection can
make the server hold any amount of memory before a request even starts; and a head that
never finishes keeps its connection forever. Here:

* a head (request line and headers) over ``max_header_bytes`` is answered 431 with the
  API's error envelope, and the connection closed;
* a head not complete ``header_timeout_seconds`` after the connection opened (or after the
  first byte of a later request on it) has its connection closed;
* a request answered before its body has all arrived (a 401 or 413 from the head alone)
  has the rest of its body drained for at most ``drain_seconds`` and ``drain_bytes``, then
  its connection closed: a client cannot hold a connection by sending the body it declared a
  byte at a time to a server that has already answered. A body that ends within the bounds
  keeps the connection open for the next request.

Bodies are bounded by the routes (``api/routes/body.py``): a size limit and an idle timeout.
"""

from __future__ import annotations

import asyncio

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from batchd.api.errors import error_headers
from batchd.config import Settings
from batchd.ids import new_request_id
from batchd.schemas.errors import error_envelope


class _HeadTooLarge(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout = 30.0
    drain_seconds = 10.0
    drain_bytes = 512 * 1024 * 1024

    _raw_head_bytes = 0  # whole chunks that arrived while the head was incomplete
    _parsed_head_bytes = 0  # the request line and the headers httptools has reported
    _in_head = True
    _head_too_large = False
    _head_timer: asyncio.TimerHandle | None = None
    _drain_timer: asyncio.TimerHandle | None = None
    _drained = 0  # bytes received since the answer went out before the body ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._stop_draining()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._drain_timer is not None:
            self._drained += len(data)
            if self._drained > self.drain_bytes:
                self._stop_draining()
                self.transport.close()
                return
        was_in_head = self._in_head
        super().data_received(data)
        # A head still incomplete after a whole chunk: count it raw, since httptools
        # reports a header only once its line has ended.
        if was_in_head and self._in_head and not self._head_too_large:
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.max_head_bytes:
                self._head_too_large = True
                self._refuse_head()

    def on_message_begin(self) -> None:
        self._in_head, self._raw_head_bytes, self._parsed_head_bytes = True, 0, 0
        self._arm_head_timer()
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_draining()  # the rest of an answered body arrived in time: keep going
        super().on_message_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._drained = 0
            self._drain_timer = self.loop.call_later(self.drain_seconds, self._drain_too_slow)

    def _drain_too_slow(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _stop_draining(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to any parser error, ours included (raised from a callback).
        if self._head_too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _count(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge

    def _refuse_head(self) -> None:
        if self.transport.is_closing():
            return
        request_id = new_request_id()
        message = f"the request line and headers exceed the limit of {self.max_head_bytes} bytes"
        body = msgspec.json.encode(error_envelope("request_too_large", message, request_id))
        headers = {
            **error_headers(431, request_id),
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "close",
        }
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        status = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        self.transport.write(status + head.encode("latin-1") + b"\r\n" + body)
        self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()


def http_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (``http=``), with the settings' bounds."""
    return type(
        "BatchdHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "head_timeout": settings.header_timeout_seconds,
            "drain_seconds": settings.drain_seconds,
            "drain_bytes": settings.drain_bytes,
        },
    )
