"""GET /v1/models, GET /status/backends and GET /healthz."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from batchd.api.deps import OperatorDep, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.schemas.models import ModelInfo, ModelList
from batchd.schemas.status import BackendState, BackendStateList, FleetState, Health

router = APIRouter()

_EPOCH = "2026-01-01T00:00:00Z"


@router.get("/v1/models", tags=["models"])
async def list_models(
    services: ServicesDep,
    workspace: WorkspaceDep,  # noqa: ARG001  (authenticates the caller)
) -> JSON:
    data = [ModelInfo(name, name, _EPOCH, "active") for name in services.router.model_names()]
    return JSON(
        ModelList(
            data=data,
            has_more=False,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )
    )


@router.get("/status/backends", tags=["health"])
async def backend_status(services: ServicesDep, _operator: OperatorDep) -> JSON:
    """Each backend's pacing as it stands: limit, in flight, waiting, retries, last error.

    For operator keys only: the last error is the upstream's text about some workspace's
    request, and the figures are every workspace's."""
    states = []
    for name, runner in services.runners.items():
        status = runner.pacer.status()
        states.append(
            BackendState(
                name,
                status.limit,
                status.in_flight,
                status.waiting,
                status.retries,
                status.last_error,
                status.limit_source,
                status.budgets,
                None if status.fleet is None else FleetState(**asdict(status.fleet)),
            )
        )
    return JSON(BackendStateList(states))


@router.get("/healthz", tags=["health"])
async def healthz() -> JSON:
    return JSON(Health("ok"))
