"""Reading a request body under a size limit, a byte budget and an idle timeout.

The body is refused while it is still arriving: a declared ``content-length`` over the
limit at once, a streamed one as soon as it passes the limit. Its bytes are charged to the
caller's budget (``api/bodies.py``) before they are read: the declared length up front, a
chunked body chunk by chunk. A client that stops sending for ``body_idle_timeout_seconds``
is answered 408 and its partial body dropped.

With a declared length, the body is read into one buffer of that size: no growing copies.
"""

from __future__ import annotations

import asyncio

from fastapi import Request

from batchd.api.bodies import Held
from batchd.config import Settings
from batchd.errors import InvalidRequest, RequestTimedOut, RequestTooLarge


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"request body exceeds the limit of {limit} bytes")


async def read_body(request: Request, settings: Settings, held: Held, limit: int) -> bytearray:
    """The body of ``request``, at most ``limit`` bytes, charged to ``held``."""
    idle_timeout = settings.body_idle_timeout_seconds
    declared = request.headers.get("content-length")
    size: int | None = None
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("content-length is not a number") from None
        if size < 0:
            raise InvalidRequest("content-length is negative")
        if size > limit:
            raise _too_large(limit)
        held.take(size)
    body = bytearray(size or 0)  # a declared body fills this buffer in place
    filled = 0
    chunks = request.stream()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            del body[filled:]
            return body
        except TimeoutError:
            await chunks.aclose()
            raise RequestTimedOut(
                f"no part of the request body arrived for {idle_timeout:g} s "
                f"({filled} bytes had); send the whole body without pausing"
            ) from None
        end = filled + len(chunk)
        if end > limit:
            raise _too_large(limit)
        if size is None:
            held.take(len(chunk))
        body[filled:end] = chunk
        filled = end
