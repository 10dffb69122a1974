"""The synchronous Messages use case: one request, answered on the same backends.

A caller is waiting, so its call goes before batch work on the same backend (the next
free slot is its), and retries are fewer and shorter than in batches. An upstream's
failure reaches the caller as the API's type and status for it (``batchd.errors``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router
from batchd.backends.runner import BackendRunner
from batchd.validation import Params, check_params

INTERACTIVE_MAX_RETRIES = 2
INTERACTIVE_MAX_DELAY = 10.0


class MessageService:
    def __init__(self, router: Router, runners: dict[str, BackendRunner]) -> None:
        self._router = router
        self._runners = runners

    async def create(self, body: bytes) -> tuple[Params, dict[str, Any]]:
        params = check_params(body, in_batch=False)
        name = self._router.backend_for(params.model)
        self._router.check_max_tokens(name, params.max_tokens)
        self._router.check_urls(name, params)
        runner = self._runners[name]
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        policy = RetryPolicy(
            min(runner.policy.max_retries, INTERACTIVE_MAX_RETRIES),
            runner.policy.base_seconds,
            min(runner.policy.max_seconds, INTERACTIVE_MAX_DELAY),
        )
        slot = await runner.pacer.acquire(interactive=True)
        try:
            message = await runner.run(params, raw, slot, interactive=True, policy=policy)
        finally:
            slot.release()
        return params, message


def _without_stream(body: bytes) -> bytes:
    decoded = msgspec.json.decode(body)
    decoded.pop("stream", None)
    return msgspec.json.encode(decoded)
