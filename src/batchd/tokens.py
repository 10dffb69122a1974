"""Counting a request's input tokens (``POST /v1/messages/count_tokens``) on its backend.

Each backend counts in its own way (``batchd.backends.base.TokenCounter``): an
Anthropic-compatible upstream is asked, an OpenAI-compatible one is asked through its
``/tokenize`` (vLLM, SGLang) or else estimated, and the mock estimates.

The count uses a short-lived client for the routed backend, so it never takes a
connection slot from the batches running on the same backend.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from batchd.backends.base import TokenCounter
from batchd.backends.estimate import estimate_input_tokens
from batchd.backends.router import Router, build_backend
from batchd.config import BackendConfig
from batchd.errors import NotFound, UpstreamError
from batchd.validation import check_count_tokens


class TokenService:
    def __init__(self, router: Router, configs: Sequence[BackendConfig]) -> None:
        self._router = router
        self._configs = {config.name: config for config in configs}

    async def count(self, body: bytes) -> int:
        params = check_count_tokens(body)
        name = self._router.route(params.model)
        if name is None:
            raise NotFound(f"model: {params.model!r} is not served here")
        request = msgspec.json.decode(body)
        backend = build_backend(self._configs[name])
        if not isinstance(backend, TokenCounter):
            return estimate_input_tokens(params.system, request["messages"], params.tools)
        await backend.start()
        try:
            return await backend.count_tokens(request, body)
        except UpstreamError as exc:
            if exc.refused_credentials:
                raise exc.as_batchd_fault(name) from exc
            raise
        finally:
            await backend.close()
