"""The built-in mock backend: no network, deterministic answers derived from the input.

It answers the Messages API and the OpenAI dialect's ``/v1/chat/completions`` (the same
echo of the last user turn) and ``/v1/embeddings`` (unit vectors of ``MOCK_DIMENSIONS``
values drawn from a hash of each input: equal inputs, equal vectors).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import msgspec

from batchd.backends.base import OPENAI_CHAT, OPENAI_EMBEDDINGS
from batchd.backends.embeddings import Input, embeddings_request, embeddings_response
from batchd.backends.estimate import estimate_input_tokens, estimate_tokens
from batchd.backends.messages_translate import completion_from_message, messages_request
from batchd.config import BackendConfig
from batchd.errors import InvalidRequest
from batchd.validation import Params, check_params

MOCK_DIMENSIONS = 16
MOCK_MAX_TOKENS = 4096  # a chat request's max_tokens when it names none
_SAMPLING = ("temperature", "top_p", "top_k", "seed")


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b["text"] for b in content if b.get("type") == "text" and "text" in b)


class MockBackend:
    def __init__(self, config: BackendConfig) -> None:
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.max_retries: int | None = None
        self._latency = config.latency_ms / 1000

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:
        if self._latency:
            await asyncio.sleep(self._latency)
        return mock_message(params, raw)

    async def call_openai(self, endpoint: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        if self._latency:
            await asyncio.sleep(self._latency)
        if endpoint == OPENAI_CHAT:
            return mock_chat_completion(body, raw)
        if endpoint == OPENAI_EMBEDDINGS:
            return mock_embeddings(body)
        raise InvalidRequest(f"{endpoint} is not served by the mock backend")

    async def count_tokens(self, request: dict[str, Any], raw: bytes) -> int:  # noqa: ARG002
        """An estimate (see ``batchd.backends.estimate``): the mock has no tokenizer."""
        return estimate_input_tokens(
            request.get("system"), request.get("messages"), request.get("tools")
        )


def mock_message(params: Params, raw: bytes) -> dict[str, Any]:
    """The mock's answer: it echoes the last user turn, cut to ``max_tokens`` words."""
    prompt = _text_of(params.messages[-1].content) if params.messages else ""
    digest = hashlib.sha256(raw).hexdigest()
    content: list[dict[str, Any]]
    stop_sequence = None
    choice = (params.tool_choice or {}).get("type")
    if params.tools and choice in ("any", "tool"):
        name = params.tool_choice["name"] if choice == "tool" and params.tool_choice else None
        content = [
            {
                "type": "tool_use",
                "id": "toolu_" + digest[:24],
                "name": name or params.tools[0]["name"],
                "input": {},
            }
        ]
        stop_reason, output_tokens = "tool_use", 8
    else:
        words = ("Mock reply: " + " ".join(prompt.split())).split(" ")
        stop_reason = "end_turn"
        if len(words) > params.max_tokens:
            words, stop_reason = words[: params.max_tokens], "max_tokens"
        text = " ".join(words)
        for sequence in params.stop_sequences or ():
            if sequence and sequence in text:
                text, stop_reason, stop_sequence = (
                    text.split(sequence, 1)[0],
                    "stop_sequence",
                    sequence,
                )
                break
        content = [{"type": "text", "text": text}]
        output_tokens = len(text.split()) if text else 0
    return {
        "id": "msg_" + digest[:24],
        "type": "message",
        "role": "assistant",
        "model": params.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            # count_tokens' estimate, of the same request
            "input_tokens": estimate_input_tokens(params.system, params.messages, params.tools),
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def mock_chat_completion(body: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The mock's chat answer: its Messages answer to the same request, both translated
    (``messages_translate``), so the two faces answer alike."""
    model = body.get("model")
    if not isinstance(model, str):
        raise InvalidRequest("model: Field required (a string)")
    unsampled = {k: v for k, v in body.items() if k not in _SAMPLING}  # the mock does not sample
    request = messages_request(unsampled, model=model, default_max_tokens=MOCK_MAX_TOKENS)
    params = check_params(msgspec.json.encode(request), in_batch=False)
    message = mock_message(params, raw)
    return completion_from_message(message, model=model, created=int(time.time()))


def mock_embeddings(body: dict[str, Any]) -> dict[str, Any]:
    request = embeddings_request(body)
    dimensions = max(request.dimensions or 0, MOCK_DIMENSIONS)
    vectors = [_mock_vector(item, dimensions) for item in request.inputs]
    tokens = sum(len(i) if isinstance(i, list) else estimate_tokens(i) for i in request.inputs)
    return embeddings_response(request, vectors, prompt_tokens=tokens)


def _mock_vector(item: Input, dimensions: int) -> list[float]:
    seed = item.encode() if isinstance(item, str) else repr(item).encode()
    digest = hashlib.shake_256(seed).digest(dimensions)
    return [byte / 127.5 - 1.0 for byte in digest]
