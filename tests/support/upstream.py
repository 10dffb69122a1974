"""A fake Anthropic-compatible upstream: a real Starlette app on loopback, with faults on demand.

``POST /v1/messages`` answers a valid Message that echoes the last user text, and records
every call under that text (its *key*), so a test can count how often each request reached
the upstream and when. What to do instead of answering is decided per call by a *fault
rule*, a function of ``(key, attempt)`` (attempt 1 is the first call with that key):

    always(invalid_request("bad"))                    every call is a 400
    first_attempt_of(0.3, overloaded(), seed=7)       the first call of ~30% of the keys is a 529
    first_attempts(2, rate_limited(retry_after_ms=300))

Faults: an HTTP error in the API's envelope (``status``), a connection dropped in the
middle of the body (``RESET``), a 200 whose body is not JSON (``MALFORMED``) or is JSON
but no Message (``NOT_A_MESSAGE``), an error page from a proxy (``html_error(502)``), an
answer that starts late (``slow(seconds)``), one whose body trickles in over
``slow_body(seconds)``, and no answer at all until the caller hangs up (``HANG``; the
upstream counts the calls abandoned so, ``abandoned(key)``).

The answer honours ``max_tokens`` (a word a token) and ``stop_sequences`` as the API does;
a ``tool_choice`` naming a tool adds a ``tool_use`` block calling it with ``{"text": key}``.

With ``capacity=C`` it admits at most C calls at once and answers 429 above that, as a
real server at its limit does; ``levels_at_admission`` tells how many it held as calls came.
``hold()`` keeps the calls it admits waiting until ``release(n)`` lets n of them answer, so
that a test can step a backend through its work without racing the clock.

Modes that stand for real upstreams' limits: ``capacity_retry_after=S`` adds
``retry-after: S`` to the capacity 429s (LiteLLM does, for a concurrency limit);
``budget=RequestBudget(...)`` (tests/support/budget.py) keeps a requests-per-minute budget
and publishes it in every answer's headers; ``knee=K`` never refuses but answers more
slowly once more than K calls are in progress (``latency * active / K``), as a model
server that queues does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.support.budget import RequestBudget
from tests.support.server import serve_app


@dataclass(frozen=True)
class Fault:
    """What the upstream does instead of answering one call."""

    kind: Literal[
        "status", "reset", "malformed", "not-a-message", "html", "slow", "slow-body", "hang"
    ]
    status: int = 500
    error_type: str = "api_error"
    message: str = "injected failure"
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # slow, slow-body: how long before the answer starts or ends


FaultRule = Callable[[str, int], Fault | None]

RESET = Fault("reset")
MALFORMED = Fault("malformed")
NOT_A_MESSAGE = Fault("not-a-message")
HANG = Fault("hang")


def slow(seconds: float) -> Fault:
    return Fault("slow", seconds=seconds)


def slow_body(seconds: float) -> Fault:
    """A 200 and a valid Message, its body sent a few bytes at a time over ``seconds``."""
    return Fault("slow-body", seconds=seconds)


def html_error(status: int = 502) -> Fault:
    """An error page such as a proxy in front of the upstream sends: not the API's envelope."""
    return Fault("html", status)


def overloaded(message: str = "Overloaded") -> Fault:
    return Fault("status", 529, "overloaded_error", message)


def server_error(message: str = "Internal server error") -> Fault:
    return Fault("status", 500, "api_error", message)


def rate_limited(retry_after_ms: int | None = None, message: str = "Rate limited") -> Fault:
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
    return Fault("status", 429, "rate_limit_error", message, headers)


def invalid_request(message: str = "messages: bad request") -> Fault:
    return Fault("status", 400, "invalid_request_error", message)


def unauthorized(message: str = "invalid x-api-key") -> Fault:
    return Fault("status", 401, "authentication_error", message)


def always(fault: Fault) -> FaultRule:
    return lambda _key, _attempt: fault


def first_attempts(n: int, fault: Fault) -> FaultRule:
    """The first ``n`` calls of every key fail; later ones succeed."""
    return lambda _key, attempt: fault if attempt <= n else None


def is_picked(key: str, fraction: float, seed: int = 0) -> bool:
    """A deterministic choice of ``fraction`` of all keys, stable across runs."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(digest).random() < fraction


def first_attempt_of(fraction: float, *faults: Fault, seed: int = 0) -> FaultRule:
    """The first call of a seeded ``fraction`` of the keys fails, cycling through ``faults``."""

    def rule(key: str, attempt: int) -> Fault | None:
        if attempt != 1 or not is_picked(key, fraction, seed):
            return None
        return faults[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(faults)]

    return rule


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b.get("type") == "text")


def request_key(params: Mapping[str, Any]) -> str:
    """The text of the last user message: how the fake upstream tells requests apart."""
    users = [m for m in params.get("messages", []) if m.get("role") == "user"]
    return _text_of(users[-1]["content"]) if users else ""


def count_tokens_answer(key: str) -> int:
    """What the fake's count_tokens answers: a number no estimate would give by chance."""
    return 1000 + len(key)


def message_for(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The key echoed, cut before the first stop sequence in it or to ``max_tokens`` words."""
    text, stop_reason, stop_sequence = key, "end_turn", None
    for sequence in params.get("stop_sequences") or ():
        if sequence and sequence in text:
            text, stop_reason, stop_sequence = text.split(sequence, 1)[0], "stop_sequence", sequence
            break
    words = text.split(" ")
    if stop_sequence is None and len(words) > params.get("max_tokens", len(words)):
        text, stop_reason = " ".join(words[: params["max_tokens"]]), "max_tokens"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    choice = params.get("tool_choice") or {}
    if choice.get("type") == "tool":  # the named tool, called with the key
        tool_use = {"type": "tool_use", "id": "toolu_" + digest, "name": choice.get("name", "")}
        content.append(tool_use | {"input": {"text": key}})
        stop_reason = "tool_use"
    return {
        "id": "msg_" + digest,
        "type": "message",
        "role": "assistant",
        "model": params.get("model", "unknown"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": max(1, len(key) // 4), "output_tokens": len(text.split())},
    }


async def until_disconnected(request: Request) -> None:
    """Wait until the client closes the connection (the body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _DroppedConnection(Response):
    """Start a response, send part of the body, then fail: the server drops the connection."""

    async def __call__(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "msg_', "more_body": True})
        raise ConnectionResetError("fake upstream dropped the connection")


class _SlowBody(Response):
    """A whole, valid body, sent in ten pieces spread over ``seconds``."""

    def __init__(self, body: bytes, seconds: float) -> None:
        super().__init__(body, media_type="application/json")
        self.seconds = seconds

    async def __call__(self, _scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        step = -(-len(self.body) // 10)
        for start in range(0, len(self.body), step):
            await asyncio.sleep(self.seconds / 10)
            chunk = self.body[start : start + step]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class FakeUpstream:
    """The app and its record of calls; safe to read from the test thread while it serves."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        faults: FaultRule | None = None,
        api_key: str | None = None,
        capacity: int | None = None,
        capacity_retry_after: float | None = None,
        budget: RequestBudget | None = None,
        knee: int | None = None,
    ) -> None:
        self.latency = latency
        self.faults = faults
        self.api_key = api_key
        self.capacity = capacity
        self.capacity_retry_after = capacity_retry_after
        self.budget = budget
        self.knee = knee
        self.admitted = 0  # calls answered with a Message
        self.rejected = 0  # calls refused with 429 for being over capacity
        self.active = 0
        self.peak = 0  # the most calls it ever held at once
        self._changes: list[tuple[float, int]] = [(time.monotonic(), 0)]
        self.url = ""
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._times: defaultdict[str, list[float]] = defaultdict(list)
        self._keys_sent: list[str | None] = []
        self._abandoned: Counter[str] = Counter()
        self._arrivals: list[str] = []
        self._passes: int | None = None  # while held: calls that may still answer
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
            ]
        )

    # -- what the tests read -------------------------------------------------------------

    def calls(self, key: str) -> int:
        with self._lock:
            return self._calls[key]

    def all_calls(self) -> Counter[str]:
        with self._lock:
            return Counter(self._calls)

    def times(self, key: str) -> list[float]:
        """``time.monotonic()`` at the arrival of each call with this key."""
        with self._lock:
            return list(self._times[key])

    def abandoned(self, key: str) -> int:
        """Calls with this key whose caller hung up before an answer (``HANG``)."""
        with self._lock:
            return self._abandoned[key]

    def arrivals(self) -> list[str]:
        """The key of every call, in the order they arrived."""
        with self._lock:
            return list(self._arrivals)

    def hold(self) -> None:
        """From now on, admitted calls wait (counted in ``active``) until released."""
        with self._lock:
            self._passes = 0

    def release(self, n: int | None = None) -> None:
        """Let ``n`` held calls answer, or all of them from now on."""
        with self._lock:
            self._passes = None if n is None or self._passes is None else self._passes + n

    async def _pass_gate(self) -> None:
        while True:
            with self._lock:
                if self._passes is None:
                    return
                if self._passes > 0:
                    self._passes -= 1
                    return
            await asyncio.sleep(0.005)  # the test thread releases: look again soon

    def api_keys_sent(self) -> list[str | None]:
        with self._lock:
            return list(self._keys_sent)

    def busy(self) -> tuple[float, float]:
        """Call-seconds served (the calls in progress integrated over time) and the seconds
        from the first admitted call to the last answer."""
        with self._lock:
            changes = list(self._changes)
        served = sum((b[0] - a[0]) * a[1] for a, b in pairwise(changes))
        started = next((t for t, level in changes if level > 0), changes[-1][0])
        return served, changes[-1][0] - started

    def levels_at_admission(self) -> list[int]:
        """The calls in progress just after each admitted call arrived (itself included)."""
        with self._lock:
            changes = list(self._changes)
        return [level for (_, before), (_, level) in pairwise(changes) if level > before]

    def _enter(self) -> bool:
        with self._lock:
            if self.capacity is not None and self.active >= self.capacity:
                self.rejected += 1
                return False
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._changes.append((time.monotonic(), self.active))
            return True

    def _fault_for(self, key: str, attempt: int) -> tuple[Fault | None, dict[str, str]]:
        """The fault rule's verdict, else the budget's; and the budget's headers."""
        fault = self.faults(key, attempt) if self.faults else None
        if fault is not None or self.budget is None:
            return fault, {}
        admitted, headers = self.budget.take()
        if admitted:
            return None, headers
        return Fault("status", 429, "rate_limit_error", "over budget", headers), headers

    def _over_capacity(self) -> Fault:
        fault = rate_limited(message="over capacity")
        if self.capacity_retry_after is None:
            return fault
        return Fault(
            "status",
            429,
            "rate_limit_error",
            fault.message,
            {"retry-after": f"{self.capacity_retry_after:g}"},
        )

    def _latency_now(self) -> float:
        """The latency of a call admitted now: longer past the knee, as calls queue."""
        if self.knee is None:
            return self.latency
        with self._lock:
            return self.latency * max(1.0, self.active / self.knee)

    def _leave(self) -> None:
        with self._lock:
            self.admitted += 1
            self.active -= 1
            self._changes.append((time.monotonic(), self.active))

    # -- the endpoint --------------------------------------------------------------------

    async def _count_tokens(self, request: Request) -> Response:
        """``count_tokens_answer(key)`` tokens; the same key check as ``/v1/messages``."""
        key = request_key(json.loads(await request.body()))
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(unauthorized())
        return JSONResponse({"input_tokens": count_tokens_answer(key)})

    async def _messages(self, request: Request) -> Response:
        params = json.loads(await request.body())
        key = request_key(params)
        sent_key = request.headers.get("x-api-key")
        with self._lock:
            self._calls[key] += 1
            attempt = self._calls[key]
            self._times[key].append(time.monotonic())
            self._keys_sent.append(sent_key)
            self._arrivals.append(key)
        if self.api_key is not None and sent_key != self.api_key:
            return _error(unauthorized())
        fault, headers = self._fault_for(key, attempt)
        if fault is None and not self._enter():
            return _error(self._over_capacity())
        if fault is None:
            try:
                await self._pass_gate()
                await asyncio.sleep(self._latency_now())
            finally:
                self._leave()
            return JSONResponse(message_for(params, key), headers=headers)
        if fault.kind == "hang":
            await until_disconnected(request)
            with self._lock:
                self._abandoned[key] += 1
            return Response(status_code=499)  # nobody is left to read it
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return JSONResponse(message_for(params, key))
        if fault.kind == "slow-body":
            return _SlowBody(json.dumps(message_for(params, key)).encode(), fault.seconds)
        if fault.kind == "reset":
            return _DroppedConnection()
        if fault.kind == "malformed":
            return Response(b'{"id": "msg_01", "content": [', media_type="application/json")
        if fault.kind == "not-a-message":
            return JSONResponse({"id": "msg_01", "type": "message"})
        if fault.kind == "html":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return Response(page, status_code=fault.status, media_type="text/html")
        return _error(fault)


def _error(fault: Fault) -> JSONResponse:
    body = {"type": "error", "error": {"type": fault.error_type, "message": fault.message}}
    return JSONResponse(body, status_code=fault.status, headers=dict(fault.headers))


def backend_of(upstream: FakeUpstream, **options: Any) -> dict[str, Any]:
    """A ``[[backends]]`` entry (as Settings take it) serving ``claude-*`` from ``upstream``."""
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": upstream.url,
        "models": ["claude-*"],
        **options,
    }


@contextmanager
def serve_upstream(
    *,
    latency: float = 0.0,
    faults: FaultRule | None = None,
    api_key: str | None = None,
    capacity: int | None = None,
    **modes: Any,
) -> Iterator[FakeUpstream]:
    """A FakeUpstream served on a loopback port until the block exits; ``.url`` is set.
    ``modes``: ``capacity_retry_after``, ``budget``, ``knee`` (see the module's docstring)."""
    upstream = FakeUpstream(
        latency=latency, faults=faults, api_key=api_key, capacity=capacity, **modes
    )
    with serve_app(upstream.app) as running:
        upstream.url = running.url
        yield upstream


def upstream_backend(upstream: FakeUpstream, **options: Any) -> dict[str, Any]:
    """A backend table (as Settings takes it) sending models ``claude-*`` to ``upstream``."""
    table: dict[str, Any] = {"name": "up", "kind": "anthropic", "base_url": upstream.url}
    return table | {"models": ["claude-*"]} | options
