"""Counting a request's input tokens (``POST /v1/messages/count_tokens``) on its backend.

Each backend counts in its own way (``batchd.backends.base.TokenCounter``): an
Anthropic-compatible upstream is asked, an OpenAI-compatible one is asked through its
``/tokenize`` (vLLM, SGLang) or else estimated, and the mock estimates. A local model
(``transformers``, ``vllm``) is counted with its own tokenizer and chat template.

The count uses a short-lived client for the routed backend, so it never takes a
connection slot from the batches running on the same backend; a local model is asked in
place (its tokenizer is already loaded, and counting generates nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from batchd.backends.base import Backend, TokenCounter
from batchd.backends.estimate import estimate_input_tokens
from batchd.backends.router import Router, build_backend
from batchd.config import LOCAL_KINDS, BackendConfig
from batchd.validation import check_count_tokens

COUNT_CONCURRENCY = 8  # count_tokens calls at once for an estimate


class TokenService:
    def __init__(
        self,
        router: Router,
        configs: Sequence[BackendConfig],
        running: Mapping[str, Backend] | None = None,
    ) -> None:
        self._router = router
        self._configs = {config.name: config for config in configs}
        running = running or {}
        self._in_process = {
            c.name: running[c.name] for c in configs if c.kind in LOCAL_KINDS and c.name in running
        }

    def method(self, name: str) -> str:
        """How backend ``name`` counts: ``tokenizer`` (a local model's own: exact),
        ``upstream`` (the upstream's count_tokens or /tokenize; an OpenAI-compatible server
        without /tokenize is estimated) or ``estimate`` (about 4 characters a token)."""
        if name in self._in_process:
            return "tokenizer"
        kind = self._configs[name].kind if name in self._configs else "mock"
        return "upstream" if kind in ("anthropic", "openai") else "estimate"

    async def count_each(self, name: str, requests: Sequence[dict[str, Any]]) -> list[int]:
        """The input tokens of each count_tokens request on backend ``name``, a few at a
        time, on one short-lived client for them all."""
        local = self._in_process.get(name)
        backend = local or (build_backend(self._configs[name]) if name in self._configs else None)
        if not isinstance(backend, TokenCounter):
            return [
                estimate_input_tokens(r.get("system"), r["messages"], r.get("tools"))
                for r in requests
            ]
        counter: TokenCounter = backend
        gate = asyncio.Semaphore(COUNT_CONCURRENCY)

        async def one(request: dict[str, Any]) -> int:
            async with gate:
                return await counter.count_tokens(request, msgspec.json.encode(request))

        if local is not None:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        assert backend is not None
        await backend.start()
        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await backend.close()

    async def count(self, body: bytes) -> int:
        params = check_count_tokens(body)
        name = self._router.backend_for(params.model)
        self._router.check_urls(name, params)  # /tokenize may fetch them too
        request = msgspec.json.decode(body)
        local = self._in_process.get(name)
        if isinstance(local, TokenCounter):
            return await local.count_tokens(request, body)
        backend = build_backend(self._configs[name])
        if not isinstance(backend, TokenCounter):
            return estimate_input_tokens(params.system, request["messages"], params.tools)
        await backend.start()
        try:
            return await backend.count_tokens(request, body)
        finally:
            await backend.close()
