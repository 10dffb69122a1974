"""Reading a ``multipart/form-data`` upload as it streams in, with bounded memory.

The ``file`` part is written to a temporary file as it arrives (never held whole), counted
in bytes and lines, and refused (413) as soon as it passes the limit; the other parts are
short text fields (``purpose``, ``expires_after[seconds]``), held up to a few KiB. A client
that stops sending for ``idle_timeout`` seconds is answered 408. This is the subset of RFC
7578 that HTTP clients send (the ``openai`` SDK's httpx among them): no nested multiparts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from batchd.errors import InvalidRequest, RequestTimedOut, RequestTooLarge

MAX_FIELD_BYTES = 4096  # a text part
MAX_HEADER_BYTES = 16 * 1024  # the headers of one part
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.I)
_PARAM = re.compile(r'\b(name|filename)="((?:[^"\\]|\\.)*)"', re.I)


@dataclass(slots=True)
class Form:
    spool: BinaryIO  # where the file part is written
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # of the file part; None: the form had none
    size: int = 0  # of the file part
    lines: int = 0  # of the file part: its newlines, and a last line without one
    _last: bytes = b"\n"


def boundary_of(content_type: str) -> bytes:
    media_type = content_type.partition(";")[0].strip().lower()
    match = _BOUNDARY.search(content_type)
    if media_type != "multipart/form-data" or match is None:
        raise InvalidRequest(
            "the upload must be multipart/form-data with a boundary "
            f"(got content-type {content_type!r})"
        )
    return (match[1] or match[2]).encode("latin-1")


async def read_form(
    stream: AsyncIterator[bytes],
    boundary: bytes,
    spool: BinaryIO,
    *,
    max_file_bytes: int,
    idle_timeout: float,
) -> Form:
    """The form's fields; its ``file`` part written to ``spool`` (rewound)."""
    form = Form(spool)
    parser = _Parser(form, boundary, max_file_bytes)
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise RequestTimedOut(
                f"no part of the upload arrived for {idle_timeout:g} s; send it without pausing"
            ) from None
        parser.feed(chunk)
    parser.end()
    spool.seek(0)
    form.lines += form._last != b"\n"
    return form


class _Parser:
    def __init__(self, form: Form, boundary: bytes, max_file_bytes: int) -> None:
        self._form = form
        self._max = max_file_bytes
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")  # so the first delimiter looks like the others
        self._state = "preamble"  # preamble -> headers -> body -> (headers ...) -> done
        self._name: str | None = None
        self._value = bytearray()
        self._is_file = False

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while self._step():
            pass

    def end(self) -> None:
        if self._state != "done":
            raise InvalidRequest("the multipart body ended before its closing boundary")

    def _step(self) -> bool:
        """Consume what the buffer allows; False when more bytes are needed."""
        buffer = self._buffer
        if self._state == "preamble":
            at = buffer.find(self._delimiter)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(self._delimiter))]
                return False
            return self._after_delimiter(at)
        if self._state == "headers":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise InvalidRequest("a part's headers are too long")
                return False
            self._start_part(bytes(buffer[:end]))
            del buffer[: end + 4]
            self._state = "body"
            return True
        if self._state == "body":
            at = buffer.find(self._delimiter)
            keep = len(self._delimiter) - 1
            if at < 0:
                self._data(len(buffer) - keep)
                return False
            self._data(at)
            self._end_part()
            self._state = "preamble"  # finds the delimiter at the start, reads what follows
            return True
        return False  # done: an epilogue is ignored

    def _after_delimiter(self, at: int) -> bool:
        rest = self._buffer[at + len(self._delimiter) : at + len(self._delimiter) + 2]
        if len(rest) < 2:
            return False
        if rest == b"--":
            self._state = "done"
            self._buffer.clear()
            return False
        del self._buffer[: at + len(self._delimiter) + 2]  # the delimiter and its CRLF
        self._state = "headers"
        return True

    def _start_part(self, raw: bytes) -> None:
        params: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                params = {k.lower(): v for k, v in _PARAM.findall(value)}
        self._name = params.get("name")
        self._is_file = self._name == "file"
        self._value.clear()
        if self._is_file:
            if self._form.filename is not None:
                raise InvalidRequest("file: given more than once", param="file")
            # %22 is how the SDK's httpx writes a quote in a file name
            self._form.filename = params.get("filename", "upload").replace("%22", '"')

    def _data(self, end: int) -> None:
        """Consume the buffer's first ``end`` bytes, the current part's (the file part's
        written out from the buffer itself, not copied first)."""
        if end <= 0:
            return
        form, buffer = self._form, self._buffer
        if not self._is_file:
            self._value += buffer[:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"{self._name}: too long", param=self._name)
        else:
            form.size += end
            if form.size > self._max:
                raise RequestTooLarge(f"file: larger than the limit of {self._max} bytes")
            form.lines += buffer.count(b"\n", 0, end)
            form._last = bytes(buffer[end - 1 : end])
            with memoryview(buffer) as view, view[:end] as data:
                form.spool.write(data)
        del buffer[:end]

    def _end_part(self) -> None:
        if not self._is_file and self._name is not None:
            self._form.fields[self._name] = self._value.decode("utf-8", "replace")
