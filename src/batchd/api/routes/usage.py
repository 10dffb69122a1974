"""Usage and cost (batchd's own): a batch's, and a workspace's per day."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from batchd.api.deps import CallerDep, Services, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.schemas.usage import UsageList, batch_usage_to_wire, daily_to_wire, estimate_to_wire
from batchd.usecases.usage import since_day

router = APIRouter(tags=["usage (batchd's own)"])


@router.post("/v1/messages/batch_estimate")
async def estimate_batch(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    """What a create-batch body would take (input tokens, the output bound, their cost),
    creating nothing."""
    settings = services.settings
    with services.bodies.upload(caller), services.bodies.holding(caller) as held:
        body = await read_body(request, settings, held, settings.max_body_bytes)
        estimate = await services.estimates.estimate(body)
    prices = services.usage.prices
    return JSON(estimate_to_wire(estimate, prices.currency, bool(prices)))


@router.get("/v1/messages/batches/{batch_id}/usage")
async def batch_usage(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    """Tokens and requests of a batch as its results were recorded, and their cost."""
    usage_service = services.usage
    usage = await usage_service.batch(workspace, batch_id)
    costs = [usage_service.cost(m.model, m.tokens) for m in usage.models]
    return JSON(batch_usage_to_wire(usage, costs, usage_service.prices.currency))


@router.get("/v1/usage")
async def daily_usage(
    services: ServicesDep,
    workspace: WorkspaceDep,
    since: Annotated[
        str | None, Query(description="first UTC day, YYYY-MM-DD", pattern=r"^\d{4}-\d{2}-\d{2}$")
    ] = None,
) -> JSON:
    """This workspace's usage per UTC day and model (the last 30 days unless ``since``)."""
    return JSON(await usage_list(services, workspace, since_day(since, services.clock())))


async def usage_list(services: Services, workspace: str | None, since: str) -> UsageList:
    """Usage per day, workspace and model, priced (every workspace's where None)."""
    usage_service = services.usage
    days = await usage_service.daily(workspace, since)
    currency = usage_service.prices.currency
    return UsageList(
        [daily_to_wire(d, usage_service.cost(d.model, d.tokens), currency) for d in days],
        currency if usage_service.prices else None,
    )
