"""The web console at /console: a static page and script shipped in the package.

The page holds no data: its script asks the Batches API (``x-api-key`` from the tab's
session storage) and the console routes for a batch's first errors and its results (paged,
filtered, one opened, also while the batch runs); all enforce the workspace of the key.
Nothing is fetched from outside the server (the CSP says so).
"""

from __future__ import annotations

from dataclasses import asdict
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from batchd.api.deps import CallerDep, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.api.routes.usage import usage_list
from batchd.usecases.usage import since_day

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

router = APIRouter(prefix="/console/api", tags=["console"], include_in_schema=False)


@router.get("/batches/{batch_id}/errors")
async def batch_errors(
    batch_id: str,
    services: ServicesDep,
    workspace: WorkspaceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> JSON:
    errors = await services.overview.first_errors(workspace, batch_id, limit)
    return JSON({"data": [asdict(error) for error in errors]})


@router.get("/usage")
async def usage(services: ServicesDep, caller: CallerDep) -> JSON:
    """Usage per day, workspace and model for the usage page: every workspace's for an
    operator (in open mode, the local user), else the key's own."""
    workspace = None if caller.operator else caller.workspace
    return JSON(await usage_list(services, workspace, since_day(None, services.clock())))


@router.get("/batches/{batch_id}/results")
async def batch_results(
    batch_id: str,
    services: ServicesDep,
    workspace: WorkspaceDep,
    result_type: Annotated[str, Query(alias="type")] = "",
    custom_id: Annotated[str, Query(max_length=64)] = "",
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JSON:
    page = await services.overview.results(
        workspace, batch_id, result_type=result_type, custom_id=custom_id, after=after, limit=limit
    )
    return JSON({"data": [asdict(r) for r in page.data], "next_after": page.next_after})


@router.get("/batches/{batch_id}/results/{custom_id}")
async def one_result(
    batch_id: str, custom_id: str, services: ServicesDep, workspace: WorkspaceDep
) -> JSON:
    return JSON(await services.overview.result(workspace, batch_id, custom_id))


def mount(app: FastAPI) -> None:
    """Add the console's page, its data route and its static files to ``app``."""
    page = files(__package__).joinpath("static", "console.html").read_bytes()
    headers = {"content-security-policy": _CSP, "cache-control": "no-cache"}

    async def shell() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    for path in ("/console", "/console/batches/{batch_id}", "/console/usage", "/console/webhooks"):
        app.add_api_route(path, shell, methods=["GET"], include_in_schema=False)
    app.include_router(router)
    app.mount(
        "/console/static",
        StaticFiles(packages=[(__package__, "static")]),
        name="console-static",
    )
