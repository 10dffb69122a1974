"""The synchronous use cases: one request, answered on the same backends.

``create`` is a Messages request; ``call_openai`` an OpenAI one (``/v1/chat/completions``,
``/v1/embeddings``), routed by its ``model`` the same way. A caller is waiting, so its call
goes before batch work on the same backend (the next free slot is its), and retries are
fewer and shorter than in batches. An upstream's failure reaches the caller as the API's
type and status for it (``batchd.errors``).

A **flex** call (``Lane.FLEX``: ``batchd-service-tier: flex`` on the Messages face,
``service_tier = "flex"`` on the OpenAI one: pass ``lane``) may wait for capacity instead:
it goes after interactive calls and before batch work, retries as batch requests do, and
gives up only after ``FLEX_TIMEOUT`` seconds (overloaded_error, 529).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from batchd.backends.base import OPENAI_CHAT
from batchd.backends.pacing import Lane, Slot
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router
from batchd.backends.runner import BackendRunner
from batchd.errors import InvalidRequest, UpstreamError
from batchd.validation import Params, check_depth, check_params

INTERACTIVE_MAX_RETRIES = 2
INTERACTIVE_MAX_DELAY = 10.0
FLEX_TIMEOUT = 900.0  # seconds a flex call may wait and retry in all

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

    async def create(
        self, body: bytes, lane: Lane = Lane.INTERACTIVE
    ) -> tuple[Params, dict[str, Any]]:
        """Run one Messages request for a waiting caller, in ``lane`` (interactive or flex)."""
        params = check_params(body, in_batch=False)
        name = self._router.backend_for(params.model)
        self._router.check_max_tokens(name, params.max_tokens)
        self._router.check_urls(name, params)
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        message = await self._interactively(
            name,
            lambda slot, policy: self._runners[name].run(params, raw, slot, policy=policy),
            lane,
        )
        return params, message

    async def call_openai(
        self, endpoint: str, body: bytes, lane: Lane = Lane.INTERACTIVE
    ) -> tuple[OpenAIRequest, dict[str, Any]]:
        """Answer one OpenAI request; its answer is the backend's, never streamed (the API
        layer streams it when ``stream`` was asked). ``lane``: Lane.FLEX for a request with
        ``service_tier = "flex"``."""
        request = _openai_request(endpoint, body)
        if request.body.get("service_tier") == "flex":  # OpenAI's own name for the lane
            lane = Lane.FLEX
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
                endpoint, sent, raw, slot, policy=policy
            ),
            lane,
        )
        return request, answer

    async def _interactively(self, name: str, call: Call, lane: Lane) -> dict[str, Any]:
        """``call`` on backend ``name``'s next free slot of ``lane``: interactive, with the
        interactive retries, or flex, with the backend's, for up to FLEX_TIMEOUT."""
        runner = self._runners[name]
        if lane is Lane.FLEX:
            try:
                async with asyncio.timeout(FLEX_TIMEOUT):
                    return await self._in_slot(runner, call, lane, runner.policy)
            except TimeoutError:
                raise UpstreamError(
                    f"no capacity for this flex call within {FLEX_TIMEOUT:g} s",
                    upstream_status=529,
                ) from None
        policy = RetryPolicy(
            min(runner.policy.max_retries, INTERACTIVE_MAX_RETRIES),
            runner.policy.base_seconds,
            min(runner.policy.max_seconds, INTERACTIVE_MAX_DELAY),
        )
        return await self._in_slot(runner, call, lane, policy)

    async def _in_slot(
        self, runner: BackendRunner, call: Call, lane: Lane, policy: RetryPolicy
    ) -> dict[str, Any]:
        slot = await runner.pacer.acquire(lane=lane)
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
