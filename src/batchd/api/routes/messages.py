"""POST /v1/messages: the synchronous Messages API, plain JSON or server-sent events."""

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
from batchd.backends.pacing import Lane
from batchd.backends.pdf import owned_by
from batchd.errors import InvalidRequest

router = APIRouter(tags=["messages"])

TIER_HEADER = "batchd-service-tier"  # batchd's own: "flex" waits for capacity
_TIERS = {"flex": Lane.FLEX, "auto": Lane.INTERACTIVE, "standard": Lane.INTERACTIVE}


def lane_of(request: Request) -> Lane:
    """The lane the ``batchd-service-tier`` header asks for (default: interactive)."""
    tier = request.headers.get(TIER_HEADER)
    if tier is None:
        return Lane.INTERACTIVE
    if tier.strip().lower() not in _TIERS:
        raise InvalidRequest(
            f"{TIER_HEADER}: {tier!r} is not a tier; use one of {', '.join(_TIERS)}"
        )
    return _TIERS[tier.strip().lower()]


@router.post("/v1/messages", response_model=None)
async def create_message(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
) -> JSON | StreamingResponse:
    settings = services.settings
    bodies = services.bodies
    lane = lane_of(request)
    with bodies.calling(caller), bodies.holding(caller) as held, owned_by(tenant(caller)):
        body = await read_body(request, settings, held, settings.max_message_body_bytes)
        params, message = await services.messages.create(bytes(body), lane)
    if params.stream:
        return StreamingResponse(sse_events(message), media_type="text/event-stream")
    return JSON(message)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), msgspec.json.encode(data))


async def sse_events(message: dict[str, Any]) -> AsyncIterator[bytes]:
    """A whole Message replayed as the Messages streaming events."""
    usage = message.get("usage", {})
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    yield _event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message.get("content", [])):
        if block.get("type") == "text":
            first, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
        elif block.get("type") == "tool_use":
            first = {**block, "input": {}}
            delta = {
                "type": "input_json_delta",
                "partial_json": msgspec.json.encode(block.get("input", {})).decode(),
            }
        else:
            first, delta = block, None
        yield _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": first},
        )
        if delta is not None:
            yield _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message.get("stop_reason"),
                "stop_sequence": message.get("stop_sequence"),
            },
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        },
    )
    yield _event("message_stop", {"type": "message_stop"})
