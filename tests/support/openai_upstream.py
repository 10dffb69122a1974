"""A fake OpenAI-compatible model server (think vLLM): a real Starlette app on loopback.

``POST {prefix}/v1/chat/completions`` answers a chat.completion. Its *key* is the text of
the last user message:

* with tools and ``tool_choice`` "required" or a named function, it calls that function
  (or the first tool) with ``{"query": key}`` and finishes with ``tool_calls``;
* otherwise it echoes the key, cut before the first ``stop`` string it contains (finishing
  ``stop`` with vLLM's ``stop_reason`` naming the string) or to ``max_tokens`` words
  (finishing ``length``);
* with a ``budget`` (tests/support/budget.py, OpenAI's ``x-ratelimit-*`` headers) every
  answer publishes it, and a call over it is a 429 with ``retry-after``;
* a key listed in ``errors`` is answered with that HTTP status and an OpenAI error body;
* a *fault rule* (``faults``, as in ``tests.support.upstream``) may answer a call with an
  HTTP status in an OpenAI error body (``Fault.status``, its headers) or not at all until
  the caller hangs up (``HANG``, counted by ``abandoned(key)``).

``POST {prefix}/v1/embeddings`` answers one vector of ``EMBEDDING_WIDTH`` values per
input (``embedding_for``: from a hash of the input), as floats or, when asked, base64.

``POST {prefix}/tokenize`` (unless ``tokenize=False``) answers ``{"count": n}`` with
n = words of all message text + 3 per message. Every request is recorded with its path
and ``authorization`` header; with ``api_key`` set, a wrong bearer key is answered 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.budget import RequestBudget
from tests.support.server import serve_app
from tests.support.upstream import FaultRule, until_disconnected


@dataclass(frozen=True)
class Recorded:
    path: str
    authorization: str | None
    body: dict[str, Any]


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or () if p.get("type") == "text")


def request_key(body: Mapping[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return text_of(users[-1]["content"]) if users else ""


def tokenize_count(messages: list[dict[str, Any]]) -> int:
    return sum(len(text_of(m.get("content")).split()) + 3 for m in messages)


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}
    error_type = kinds.get(status, "InternalServerError")
    return {"error": {"message": message, "type": error_type, "param": None, "code": status}}


def _answer(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The message and finish fields of the one choice."""
    tools, choice = body.get("tools") or [], body.get("tool_choice")
    if tools and (choice == "required" or isinstance(choice, dict)):
        name = choice["function"]["name"] if isinstance(choice, dict) else None
        call = {
            "id": f"call_{len(key):04d}",
            "type": "function",
            "function": {
                "name": name or tools[0]["function"]["name"],
                "arguments": json.dumps({"query": key}),
            },
        }
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"message": message, "finish_reason": "tool_calls", "stop_reason": None}
    text, finish, matched = key, "stop", None
    for stop in body.get("stop") or ():
        if stop in text:
            text, matched = text.split(stop, 1)[0], stop
            break
    words = text.split(" ")
    if matched is None and len(words) > body.get("max_tokens", 1 << 30):
        text, finish = " ".join(words[: body["max_tokens"]]), "length"
    message = {"role": "assistant", "content": text, "tool_calls": []}
    return {"message": message, "finish_reason": finish, "stop_reason": matched}


EMBEDDING_WIDTH = 4


def embedding_for(item: Any) -> list[float]:
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [byte / 255 for byte in digest[:EMBEDDING_WIDTH]]


def embeddings_for(body: Mapping[str, Any]) -> dict[str, Any]:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, item in enumerate(inputs):
        vector: Any = embedding_for(item)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(len(str(item).split()) for item in inputs)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "unknown"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def completion_for(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    choice = {"index": 0, "logprobs": None, **_answer(body, key)}
    output = choice["message"]["content"] or ""
    return {
        "id": "chatcmpl-" + hashlib.sha256(key.encode()).hexdigest()[:12],
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body.get("model", "unknown"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": tokenize_count(body.get("messages", [])),
            "completion_tokens": len(output.split()),
            "total_tokens": 0,
        },
    }


class FakeOpenAI:
    """The app and its record of requests; safe to read from the test thread."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        errors: Mapping[str, tuple[int, str]] | None = None,
        tokenize: bool = True,
        prefix: str = "",
        faults: FaultRule | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.api_key = api_key
        self.budget = budget
        self.errors = dict(errors or {})
        self.faults = faults
        self._attempts: Counter[str] = Counter()
        self._abandoned: Counter[str] = Counter()
        self.url = ""  # the server's origin; add ``prefix`` for a backend's base_url
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        routes = [
            Route(f"{prefix}/v1/chat/completions", self._chat, methods=["POST"]),
            Route(f"{prefix}/v1/embeddings", self._embeddings, methods=["POST"]),
        ]
        if tokenize:
            routes.append(Route(f"{prefix}/tokenize", self._tokenize, methods=["POST"]))
        self.app = Starlette(routes=routes)

    def requests(self, path_suffix: str = "/chat/completions") -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if r.path.endswith(path_suffix)]

    def calls(self, key: str) -> int:
        """Chat calls with this key so far."""
        with self._lock:
            return self._attempts[key]

    def abandoned(self, key: str) -> int:
        """Chat calls with this key whose caller hung up before an answer (``HANG``)."""
        with self._lock:
            return self._abandoned[key]

    def bodies(self) -> dict[str, dict[str, Any]]:
        """The chat bodies received, by key."""
        return {request_key(r.body): r.body for r in self.requests()}

    async def _record(self, request: Request) -> tuple[dict[str, Any], JSONResponse | None]:
        body = json.loads(await request.body())
        authorization = request.headers.get("authorization")
        with self._lock:
            self._requests.append(Recorded(request.url.path, authorization, body))
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return body, JSONResponse(error_body(401, "Incorrect API key provided"), 401)
        return body, None

    async def _chat(self, request: Request) -> Response:
        body, refused = await self._record(request)
        if refused is not None:
            return refused
        key = request_key(body)
        with self._lock:
            self._attempts[key] += 1
            attempt = self._attempts[key]
        fault = self.faults(key, attempt) if self.faults else None
        if fault is not None and fault.kind == "hang":
            await until_disconnected(request)
            with self._lock:
                self._abandoned[key] += 1
            return Response(status_code=499)  # nobody is left to read it
        if fault is not None:
            assert fault.kind == "status", f"FakeOpenAI does not do {fault.kind!r} faults"
            body = error_body(fault.status, fault.message)
            return JSONResponse(body, status_code=fault.status, headers=dict(fault.headers))
        if key in self.errors:
            status, message = self.errors[key]
            return JSONResponse(error_body(status, message), status_code=status)
        headers: dict[str, str] = {}
        if self.budget is not None:
            admitted, headers = self.budget.take()
            if not admitted:
                refusal = error_body(429, "Rate limit reached for requests")
                return JSONResponse(refusal, status_code=429, headers=headers)
        return JSONResponse(completion_for(body, key), headers=headers)

    async def _embeddings(self, request: Request) -> JSONResponse:
        body, refused = await self._record(request)
        return refused or JSONResponse(embeddings_for(body))

    async def _tokenize(self, request: Request) -> JSONResponse:
        body, refused = await self._record(request)
        if refused is not None:
            return refused
        count = tokenize_count(body["messages"])
        return JSONResponse({"count": count, "max_model_len": 4096, "tokens": list(range(count))})


@contextmanager
def serve_openai(**options: Any) -> Iterator[FakeOpenAI]:
    """A FakeOpenAI served on a loopback port until the block exits; ``.url`` is set."""
    upstream = FakeOpenAI(**options)
    with serve_app(upstream.app) as running:
        upstream.url = running.url
        yield upstream
