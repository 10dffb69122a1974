"""The Backend protocol: one call, params in, Message out, UpstreamError on failure.

``TokenCounter`` is the optional second capability: counting a request's input tokens.
``OpenAIServer`` is the third: answering the OpenAI dialect's endpoints
(``/v1/chat/completions``, ``/v1/embeddings``) with OpenAI's response bodies.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

from batchd.validation import Params

# The priority of the upstream call in progress, lower first (vLLM's convention): 0 for an
# interactive call, 1 for flex, 2-4 for batch work of high, normal and low priority. Set by
# backends/runner.py; an upstream that schedules by priority is sent it (send_priority).
CALL_PRIORITY: ContextVar[int] = ContextVar("call_priority", default=3)


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


OPENAI_CHAT = "/v1/chat/completions"
OPENAI_EMBEDDINGS = "/v1/embeddings"


@runtime_checkable
class OpenAIServer(Protocol):
    async def call_openai(self, endpoint: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        """Answer one OpenAI request: ``endpoint`` is its path (``OPENAI_CHAT``,
        ``OPENAI_EMBEDDINGS``, others where the backend serves them natively), ``body`` the
        request decoded and ``raw`` its bytes as sent. Returns the OpenAI response body;
        raises UpstreamError (with the upstream's HTTP status) when the call fails and
        InvalidRequest for a body or an endpoint this backend cannot serve."""
        ...
