"""/metrics: Prometheus text format, behind the same keys as the API.

Any valid key may scrape (the figures are server-wide, not per workspace); a server in
open loopback mode (no keys) serves it to anyone, like the rest of the API.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from batchd.api.deps import ServicesDep, WorkspaceDep
from batchd.backends.router import backend_configs
from batchd.usecases.figures import exposition

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def scrape(services: ServicesDep, _workspace: WorkspaceDep) -> Response:
    figures = await services.overview.figures()
    backends = [config.name for config in backend_configs(services.settings)]
    body = exposition(services.metrics.registry, figures, backends)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
