"""/v1/webhooks (batchd's own): a workspace's webhook endpoints and their deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from batchd.api.deps import CallerDep, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.schemas.webhooks import (
    DeletedWebhookEndpoint,
    WebhookDeliveryList,
    WebhookEndpointList,
    WebhookTestOut,
    delivery_to_wire,
    endpoint_to_wire,
    parse_create,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks (batchd's own)"])

MAX_CREATE_BYTES = 64 * 1024


@router.post("")
async def create_endpoint(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    """A new endpoint; the answer shows its signing secret, this once."""
    with services.bodies.holding(caller) as held:
        body = await read_body(request, services.settings, held, MAX_CREATE_BYTES)
    asked = parse_create(body)
    endpoint, secret = await services.webhooks.create(caller.workspace, asked.url, asked.events)
    return JSON(endpoint_to_wire(endpoint, secret))


@router.get("")
async def list_endpoints(services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    endpoints = await services.webhooks.endpoints(workspace)
    return JSON(WebhookEndpointList([endpoint_to_wire(e) for e in endpoints]))


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    return JSON(endpoint_to_wire(await services.webhooks.get(workspace, endpoint_id)))


@router.delete("/{endpoint_id}")
async def delete_endpoint(endpoint_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    await services.webhooks.delete(workspace, endpoint_id)
    return JSON(DeletedWebhookEndpoint(endpoint_id))


@router.post("/{endpoint_id}/test")
async def test_endpoint(endpoint_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    """Queue a ``webhook.test`` event to this endpoint (sent by an engine)."""
    webhook_id = await services.webhooks.test(workspace, endpoint_id)
    return JSON(WebhookTestOut(endpoint_id, webhook_id))


@router.get("/{endpoint_id}/deliveries")
async def list_deliveries(
    endpoint_id: str,
    services: ServicesDep,
    workspace: WorkspaceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> JSON:
    """The endpoint's deliveries, newest first."""
    deliveries = await services.webhooks.deliveries(workspace, endpoint_id, limit)
    return JSON(WebhookDeliveryList([delivery_to_wire(d) for d in deliveries]))
