"""Pure checks of an OpenAI batch input file, read a chunk at a time.

Each line is ``{"custom_id", "method", "url", "body"}``. A file with any bad line fails its
batch at validation, nothing run, and ``errors`` names every bad line (1-based) with one of
these codes (OpenAI's where it has one):

    invalid_json_line     the line is not a JSON object
    invalid_request       a field is missing or of the wrong type, or method is not POST
    url_mismatch          url is not the batch's endpoint
    duplicate_custom_id   a custom_id seen on an earlier line
    model_not_found       body.model is served by no backend here
    empty_file            no line at all
    too_many_tasks        more lines than a batch may hold

Blank lines are skipped (``vllm run-batch`` files may end in one). Each line's ``body`` is
kept as the exact bytes received: it is what the backend is sent.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from batchd.schemas.openai import BatchError

MAX_ERRORS = 1000  # bad lines named at most; the count of the others is said after them


class _Line(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class _Body(msgspec.Struct):
    model: str


_line_decoder = msgspec.json.Decoder(_Line)
_body_decoder = msgspec.json.Decoder(_Body)


class InputRequest(NamedTuple):  # a tuple: made once per line, by the ten thousand
    custom_id: str
    backend: str
    model: str
    body: bytes | msgspec.Raw


@dataclass(slots=True)
class InputReader:
    """Feed it the file's chunks in order, then ``finish``: the requests, or the errors."""

    endpoint: str
    route: Callable[[str], str | None]  # a model's backend, None where none serves it
    max_lines: int
    requests: list[InputRequest] = field(default_factory=list)
    errors: list[BatchError] = field(default_factory=list)
    _bad: int = 0
    _line_no: int = 0
    _carry: bytearray = field(default_factory=bytearray)  # a line not yet ended
    _seen: set[str] = field(default_factory=set)

    def feed(self, chunk: bytes) -> None:
        """Check the lines that ``chunk`` ends; a line it leaves open waits for the next. Each
        line is decoded where it lies in the chunk (no copy), its body kept as a view."""
        start = 0
        if self._carry:  # the line an earlier chunk left open
            end = chunk.find(b"\n")
            if end < 0:
                self._carry += chunk
                return
            self._carry += chunk[: end + 1]
            line, self._carry = bytes(self._carry), bytearray()
            self._lines(line, 0)
            start = end + 1
        self._lines(chunk, start)

    def finish(self) -> list[BatchError]:
        """The errors that fail the batch; none when every line can run."""
        if self._carry:
            line, self._carry = bytes(self._carry), bytearray()
            self._lines(line + b"\n", 0)
        if not self.requests and not self._bad:
            self.errors.append(BatchError("empty_file", "The input file has no requests."))
        if self._bad > MAX_ERRORS:
            more = self._bad - MAX_ERRORS
            self.errors.append(BatchError("invalid_request", f"... and {more} more bad lines"))
        if len(self.requests) + self._bad > self.max_lines:
            self.errors.insert(
                0,
                BatchError(
                    "too_many_tasks",
                    f"The input file has {len(self.requests) + self._bad} requests; a batch "
                    f"may hold at most {self.max_lines}.",
                ),
            )
        return self.errors

    def _lines(self, data: bytes, start: int) -> None:
        """The lines of ``data`` from ``start`` that end in it; the rest is carried."""
        view, find = memoryview(data), data.find
        gc_was_enabled = gc.isenabled()
        gc.disable()  # many small objects: the collector would dominate the parse
        try:
            while (end := find(b"\n", start)) >= 0:
                self._line_no += 1
                if end > start:
                    self._one(view[start:end])
                start = end + 1
        finally:
            if gc_was_enabled:
                gc.enable()
        self._carry += view[start:]

    def _one(self, line: memoryview) -> None:
        try:
            parsed = _line_decoder.decode(line)
        except msgspec.ValidationError as exc:
            self._fail("line", "invalid_request", f"This line is not a valid request: {exc}")
            return
        except (msgspec.DecodeError, UnicodeDecodeError):
            if not line.tobytes().isspace():  # a blank line is skipped
                self._fail(None, "invalid_json_line", "This line is not parseable as valid JSON.")
            return
        if parsed.method != "POST":
            self._fail("method", "invalid_request", "method must be POST.")
        elif parsed.url != self.endpoint:
            self._fail(
                "url",
                "url_mismatch",
                f"The url {parsed.url!r} does not match the batch's endpoint {self.endpoint!r}.",
            )
        elif parsed.custom_id in self._seen:
            self._fail(
                "custom_id",
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch.",
            )
        else:
            self._seen.add(parsed.custom_id)
            self._body(parsed)

    def _body(self, parsed: _Line) -> None:
        try:
            model = _body_decoder.decode(parsed.body).model
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._fail("body", "invalid_request", f"body must be an object with a model: {exc}")
            return
        backend = self.route(model)
        if backend is None:
            self._fail("body.model", "model_not_found", f"The model {model!r} is not served here.")
            return
        self.requests.append(InputRequest(parsed.custom_id, backend, model, parsed.body))

    def _fail(self, param: str | None, code: str, message: str) -> None:
        self._bad += 1
        if self._bad <= MAX_ERRORS:
            self.errors.append(BatchError(code, message, param, self._line_no))
