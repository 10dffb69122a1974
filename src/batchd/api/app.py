"""Building the ASGI app: the routes, the error renderer, the services in the lifespan state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from batchd import __version__
from batchd.api import console, openapi
from batchd.api.deps import Services
from batchd.api.errors import install_error_handlers
from batchd.api.middleware import JsonPostsMiddleware, RequestIdMiddleware
from batchd.api.responses import JSON
from batchd.api.routes import (
    batches,
    count_tokens,
    messages,
    models,
    openai_calls,
    prometheus,
    usage,
    webhooks,
)


def create_app(services: Services) -> FastAPI:
    """The HTTP face over ``services``, which the composition root (``batchd.runtime``) has
    built and will close: the app starts nothing of its own."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"services": services}

    app = FastAPI(
        title="batchd",
        version=__version__,
        summary="An Anthropic-compatible Message Batches server",
        lifespan=lifespan,
        default_response_class=JSON,
        # /openapi.json is served; FastAPI's /docs and /redoc pages are not: they load
        # their scripts from a CDN, and everything batchd serves comes from itself.
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,  # its Location would name the Host header's host
    )
    app.add_middleware(JsonPostsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(batches.router)
    app.include_router(count_tokens.router)
    app.include_router(messages.router)
    app.include_router(models.router)
    app.include_router(openai_calls.router)
    app.include_router(prometheus.router)
    app.include_router(webhooks.router)
    app.include_router(usage.router)
    console.mount(app)
    openapi.install(app)
    return app
