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


@dataclass(frozen=True, slots=True)
class InputRequest:
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
    _carry: bytes = b""
    _seen: set[str] = field(default_factory=set)

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk if self._carry else chunk
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        if end:
            self._lines(data[:end].split(b"\n")[:-1])

    def finish(self) -> list[BatchError]:
        """The errors that fail the batch; none when every line can run."""
        if self._carry:
            self._lines([self._carry])
            self._carry = b""
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

    def _lines(self, lines: list[bytes]) -> None:
        gc_was_enabled = gc.isenabled()
        gc.disable()  # many small objects: the collector would dominate the parse
        try:
            for line in lines:
                self._line_no += 1
                if line and not line.isspace():
                    self._one(line)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _one(self, line: bytes) -> None:
        try:
            parsed = _line_decoder.decode(line)
        except msgspec.ValidationError as exc:
            self._fail("line", "invalid_request", f"This line is not a valid request: {exc}")
            return
        except (msgspec.DecodeError, UnicodeDecodeError):
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
