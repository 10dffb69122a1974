"""POST /v1/messages/count_tokens: the input tokens a Messages request would use."""

from __future__ import annotations

from fastapi import APIRouter, Request

from batchd.api.bodies import tenant
from batchd.api.deps import CallerDep, ServicesDep
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.backends.pdf import owned_by
from batchd.schemas.messages import MessageTokensCount

router = APIRouter(tags=["messages"])


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
) -> JSON:
    settings = services.settings
    bodies = services.bodies
    with bodies.calling(caller), bodies.holding(caller) as held, owned_by(tenant(caller)):
        body = await read_body(request, settings, held, settings.max_message_body_bytes)
        return JSON(MessageTokensCount(await services.tokens.count(bytes(body))))
