"""GET /v1/models, GET /status/backends and GET /healthz."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from batchd.api.deps import OperatorDep, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON

router = APIRouter()

_EPOCH = "2026-01-01T00:00:00Z"


@router.get("/v1/models", tags=["models"])
async def list_models(
    services: ServicesDep,
    workspace: WorkspaceDep,  # noqa: ARG001  (authenticates the caller)
) -> JSON:
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": _EPOCH}
        for name in services.router.model_names()
    ]
    return JSON(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/status/backends", tags=["health"])
async def backend_status(services: ServicesDep, _operator: OperatorDep) -> JSON:
    """Each backend's pacing as it stands: limit, in flight, waiting, retries, last error.

    For operator keys only: the last error is the upstream's text about some workspace's
    request, and the figures are every workspace's."""
    return JSON(
        {
            "data": [
                {"name": name, "type": "backend", **asdict(runner.pacer.status())}
                for name, runner in services.runners.items()
            ]
        }
    )


@router.get("/healthz", tags=["health"])
async def healthz() -> JSON:
    return JSON({"status": "ok"})
