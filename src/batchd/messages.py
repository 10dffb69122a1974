"""The synchronous Messages use case: one request, answered on the same backends.

A caller is waiting, so retries are fewer and shorter than in batches, and an upstream
that refuses batchd's own credentials is reported as batchd's fault (502), not the caller's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.backends.base import Backend
from batchd.backends.retry import RetryPolicy, call_with_retries
from batchd.backends.router import Router
from batchd.errors import NotFound, UpstreamError
from batchd.validation import Params, check_params

INTERACTIVE_MAX_RETRIES = 2
INTERACTIVE_MAX_DELAY = 10.0


class MessageService:
    def __init__(self, router: Router, backends: dict[str, Backend], retry: RetryPolicy) -> None:
        self._router = router
        self._backends = backends
        self._retry = RetryPolicy(
            min(retry.max_retries, INTERACTIVE_MAX_RETRIES),
            retry.base_seconds,
            min(retry.max_seconds, INTERACTIVE_MAX_DELAY),
        )

    async def create(self, body: bytes) -> tuple[Params, dict[str, Any]]:
        params = check_params(body, in_batch=False)
        name = self._router.route(params.model)
        if name is None:
            raise NotFound(f"model: {params.model!r} is not served here")
        backend = self._backends[name]
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        policy = self._retry.for_backend(
            None
            if backend.max_retries is None
            else min(backend.max_retries, INTERACTIVE_MAX_RETRIES)
        )
        try:
            message = await call_with_retries(lambda: backend.create_message(params, raw), policy)
        except UpstreamError as exc:
            if exc.status in (401, 403):
                raise UpstreamError(
                    f"backend {name!r} refused batchd's upstream credentials: {exc.message}",
                    status=502,
                    error_type="api_error",
                ) from exc
            raise
        return params, message


def _without_stream(body: bytes) -> bytes:
    decoded = msgspec.json.decode(body)
    decoded.pop("stream", None)
    return msgspec.json.encode(decoded)
