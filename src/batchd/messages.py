"""The synchronous Messages use case: one request, answered on the same backends."""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.backends.base import Backend
from batchd.backends.retry import RetryPolicy, call_with_retries
from batchd.backends.router import Router
from batchd.errors import NotFound
from batchd.validation import Params, check_params


class MessageService:
    def __init__(self, router: Router, backends: dict[str, Backend], retry: RetryPolicy) -> None:
        self._router = router
        self._backends = backends
        self._retry = retry

    async def create(self, body: bytes) -> tuple[Params, dict[str, Any]]:
        params = check_params(body, in_batch=False)
        name = self._router.route(params.model)
        if name is None:
            raise NotFound(f"model: {params.model!r} is not served here")
        backend = self._backends[name]
        raw = body
        if params.stream:  # the upstream call is never streamed; the API layer streams
            raw = _without_stream(body)
        policy = self._retry.for_backend(backend.max_retries)
        message = await call_with_retries(lambda: backend.create_message(params, raw), policy)
        return params, message


def _without_stream(body: bytes) -> bytes:
    decoded = msgspec.json.decode(body)
    decoded.pop("stream", None)
    return msgspec.json.encode(decoded)
