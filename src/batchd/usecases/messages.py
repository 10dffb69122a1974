"""The synchronous Messages use case: one request, answered on the same backends.

A caller is waiting, so its call goes before batch work on the same backend (the next
free slot is its), and retries are fewer and shorter than in batches. An upstream's
failure reaches the caller as the API's type and status for it (``batchd.errors``).

A **flex** call (``Lane.FLEX``: ``batchd-service-tier: flex`` on this face, ``service_tier =
"flex"`` on the OpenAI one) may wait for capacity instead: it goes after interactive calls
and before batch work, retries as batch requests do, and gives up only after
``FLEX_TIMEOUT`` seconds (overloaded_error, 529).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from batchd.backends.pacing import Lane
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router
from batchd.backends.runner import BackendRunner
from batchd.errors import UpstreamError
from batchd.validation import Params, check_params

INTERACTIVE_MAX_RETRIES = 2
INTERACTIVE_MAX_DELAY = 10.0
FLEX_TIMEOUT = 900.0  # seconds a flex call may wait and retry in all


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
        runner = self._runners[name]
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        if lane is Lane.FLEX:
            try:
                async with asyncio.timeout(FLEX_TIMEOUT):
                    return params, await self._run(runner, params, raw, lane, runner.policy)
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
        return params, await self._run(runner, params, raw, lane, policy)

    async def _run(
        self, runner: BackendRunner, params: Params, raw: bytes, lane: Lane, policy: RetryPolicy
    ) -> dict[str, Any]:
        slot = await runner.pacer.acquire(lane=lane)
        try:
            return await runner.run(params, raw, slot, policy=policy)
        finally:
            slot.release()


def _without_stream(body: bytes) -> bytes:
    decoded = msgspec.json.decode(body)
    decoded.pop("stream", None)
    return msgspec.json.encode(decoded)
