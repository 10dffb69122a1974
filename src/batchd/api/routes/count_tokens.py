"""POST /v1/messages/count_tokens: the input tokens a Messages request would use."""

from __future__ import annotations

from fastapi import APIRouter, Request

from batchd.api.deps import ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.schemas.messages import MessageTokensCount

router = APIRouter(tags=["messages"])


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    request: Request,
    services: ServicesDep,
    workspace: WorkspaceDep,  # noqa: ARG001  (authenticates the caller)
) -> JSON:
    body = await read_body(request, services.settings)
    return JSON(MessageTokensCount(await services.tokens.count(bytes(body))))
