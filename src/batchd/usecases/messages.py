"""The synchronous use cases: one request, answered on the same backends.

``create`` is a Messages request; ``call_openai`` an OpenAI one (``/v1/chat/completions``,
``/v1/embeddings``), routed by its ``model`` the same way. A caller is waiting, so its call
goes before batch work on the same backend (the next free slot is its), and retries are
fewer and shorter than in batches. An upstream's failure reaches the caller as the API's
type and status for it (``batchd.errors``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from batchd.backends.base import OPENAI_CHAT
from batchd.backends.pacing import Slot
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router
from batchd.backends.runner import BackendRunner
from batchd.errors import InvalidRequest
from batchd.validation import Params, check_depth, check_params

INTERACTIVE_MAX_RETRIES = 2
INTERACTIVE_MAX_DELAY = 10.0

Call = Callable[[Slot, RetryPolicy], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """An OpenAI request as it was sent: decoded, and whether the answer is to stream."""

    body: dict[str, Any]
    stream: bool


class MessageService:
    def __init__(self, router: Router, runners: dict[str, BackendRunner]) -> None:
        self._router = router
        self._runners = runners

    async def create(self, body: bytes) -> tuple[Params, dict[str, Any]]:
        params = check_params(body, in_batch=False)
        name = self._router.backend_for(params.model)
        self._router.check_max_tokens(name, params.max_tokens)
        self._router.check_urls(name, params)
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        message = await self._interactively(
            name,
            lambda slot, policy: self._runners[name].run(
                params, raw, slot, interactive=True, policy=policy
            ),
        )
        return params, message

    async def call_openai(self, endpoint: str, body: bytes) -> tuple[OpenAIRequest, dict[str, Any]]:
        """Answer one OpenAI request; its answer is the backend's, never streamed (the API
        layer streams it when ``stream`` was asked)."""
        request = _openai_request(endpoint, body)
        name = self._router.backend_for(request.body["model"])
        if endpoint == OPENAI_CHAT:
            self._router.check_chat_urls(name, request.body)
            for key in ("max_completion_tokens", "max_tokens"):
                if (limit := request.body.get(key)) is not None:
                    self._router.check_max_tokens(name, limit)
        sent = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
        raw = msgspec.json.encode(sent) if request.stream else body
        answer = await self._interactively(
            name,
            lambda slot, policy: self._runners[name].run_openai(
                endpoint, sent, raw, slot, interactive=True, policy=policy
            ),
        )
        return request, answer

    async def _interactively(self, name: str, call: Call) -> dict[str, Any]:
        """``call`` on backend ``name``'s next free slot, with the interactive retries."""
        runner = self._runners[name]
        policy = RetryPolicy(
            min(runner.policy.max_retries, INTERACTIVE_MAX_RETRIES),
            runner.policy.base_seconds,
            min(runner.policy.max_seconds, INTERACTIVE_MAX_DELAY),
        )
        slot = await runner.pacer.acquire(interactive=True)
        try:
            return await call(slot, policy)
        finally:
            slot.release()


def _openai_request(endpoint: str, body: bytes) -> OpenAIRequest:
    """The checks every OpenAI request passes before routing: a JSON object with a string
    ``model``, a boolean ``stream`` (chat only), output limits that are counts. The rest is
    the backend's to check, by what it can serve."""
    try:
        decoded = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if not isinstance(decoded, dict):
        raise InvalidRequest("request body: Input should be a valid dictionary")
    check_depth(body, "request body")
    if not isinstance(decoded.get("model"), str) or not decoded["model"]:
        raise InvalidRequest("model: Field required (a string)")
    stream = decoded.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    if stream and endpoint != OPENAI_CHAT:
        raise InvalidRequest(f"stream: {endpoint} does not stream")
    for key in ("max_completion_tokens", "max_tokens"):
        limit = decoded.get(key)
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise InvalidRequest(f"{key}: Input should be a non-negative integer")
    return OpenAIRequest(decoded, bool(stream))


def _without_stream(body: bytes) -> bytes:
    decoded = msgspec.json.decode(body)
    decoded.pop("stream", None)
    return msgspec.json.encode(decoded)
