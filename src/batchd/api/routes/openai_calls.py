"""POST /v1/chat/completions and POST /v1/embeddings: the OpenAI dialect's synchronous calls.

Routed by ``model`` to the same backends as everything else, with the Messages API's
interactive priority and limits (``usecases/messages.py``). A chat answer asked with
``stream: true`` is sent as server-sent events in OpenAI's chunk format, replayed from
the whole answer (no backend is called streaming): a first chunk with the role, one with
the text, one per tool call, a last one with ``finish_reason``, a usage chunk when
``stream_options.include_usage`` asks for it, then ``data: [DONE]``.

They are not in batchd's /openapi.json: their bodies are OpenAI's (the ``openai`` SDK's
types and OpenAI's own OpenAPI document describe them), and which of those a request may
use depends on the backend that serves its model (README, "OpenAI endpoints per backend
kind").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from batchd.api.bodies import tenant
from batchd.api.deps import CallerDep, ServicesDep
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.backends.base import OPENAI_CHAT, OPENAI_EMBEDDINGS
from batchd.backends.pdf import owned_by
from batchd.usecases.messages import OpenAIRequest

router = APIRouter(tags=["openai"])


@router.post(OPENAI_CHAT, response_model=None, include_in_schema=False)
async def create_chat_completion(
    request: Request, services: ServicesDep, caller: CallerDep
) -> JSON | StreamingResponse:
    sent, completion = await _call(OPENAI_CHAT, request, services, caller)
    if sent.stream:
        options = sent.body.get("stream_options")
        usage = isinstance(options, dict) and options.get("include_usage") is True
        return StreamingResponse(
            chunk_events(completion, include_usage=usage), media_type="text/event-stream"
        )
    return JSON(completion)


@router.post(OPENAI_EMBEDDINGS, response_model=None, include_in_schema=False)
async def create_embeddings(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    _, answer = await _call(OPENAI_EMBEDDINGS, request, services, caller)
    return JSON(answer)


async def _call(
    endpoint: str, request: Request, services: ServicesDep, caller: CallerDep
) -> tuple[OpenAIRequest, dict[str, Any]]:
    settings, bodies = services.settings, services.bodies
    with bodies.calling(caller), bodies.holding(caller) as held, owned_by(tenant(caller)):
        body = await read_body(request, settings, held, settings.max_message_body_bytes)
        return await services.messages.call_openai(endpoint, bytes(body))


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: %s\n\n" % msgspec.json.encode(chunk)


async def chunk_events(completion: dict[str, Any], *, include_usage: bool) -> AsyncIterator[bytes]:
    """A whole ``chat.completion`` replayed as ``chat.completion.chunk`` events."""
    head = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    if include_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _data({**head, "choices": [choice]})

    choices = completion.get("choices") or [{}]
    message, finish = choices[0].get("message") or {}, choices[0].get("finish_reason")
    yield chunk({"role": "assistant", "content": ""})
    if message.get("content"):
        yield chunk({"content": message["content"]})
    if message.get("refusal"):
        yield chunk({"refusal": message["refusal"]})
    for index, call in enumerate(message.get("tool_calls") or ()):
        yield chunk({"tool_calls": [{"index": index, **call}]})
    yield chunk({}, finish or "stop")
    if include_usage:
        yield _data({**head, "choices": [], "usage": completion.get("usage")})
    yield b"data: [DONE]\n\n"
