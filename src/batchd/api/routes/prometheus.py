"""/metrics: Prometheus text format, for operator keys only.

The figures are server-wide (every workspace's volumes), so only a key created with
``batchd keys create NAME --operator`` may scrape; in open loopback mode (no keys) the
local user is the operator.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from batchd.api.deps import OperatorDep, ServicesDep
from batchd.backends.router import backend_configs
from batchd.usecases.figures import exposition

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def scrape(services: ServicesDep, _operator: OperatorDep) -> Response:
    figures = await services.overview.figures(services.clock())
    backends = [config.name for config in backend_configs(services.settings)]
    body = exposition(services.metrics.registry, figures, backends)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
