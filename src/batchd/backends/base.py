"""The Backend protocol: one call, params in, Message out, UpstreamError on failure.

``TokenCounter`` is the optional second capability: counting a request's input tokens.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from batchd.validation import Params


class Backend(Protocol):
    name: str
    max_concurrency: int
    max_retries: int | None

    async def start(self) -> None: ...

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:
        """Run one Messages request; ``raw`` is the params exactly as the client sent them."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TokenCounter(Protocol):
    async def count_tokens(self, request: dict[str, Any], raw: bytes) -> int:
        """Input tokens of a count_tokens body (``request`` decoded, ``raw`` as sent)."""
        ...
