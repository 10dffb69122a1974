"""Building the ASGI app: services in the lifespan, the engine beside the API."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from batchd import __version__
from batchd.api import console, openapi
from batchd.api.bodies import BodyBudget
from batchd.api.deps import Services
from batchd.api.errors import install_error_handlers
from batchd.api.middleware import RequestIdMiddleware
from batchd.api.responses import JSON
from batchd.api.routes import batches, count_tokens, messages, models, prometheus
from batchd.backends.router import Router
from batchd.config import Settings
from batchd.engine import Engine
from batchd.engine.standalone import engine_settings, start_runtime
from batchd.metrics import Metrics
from batchd.usecases.batches import BatchLimits, BatchService
from batchd.usecases.keys import Authenticator, is_loopback
from batchd.usecases.messages import MessageService
from batchd.usecases.overview import Overview
from batchd.usecases.tokens import TokenService

log = logging.getLogger(__name__)


def _stop_process_when_engine_dies(task: asyncio.Task[None]) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.critical("the engine died; stopping the server", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            runtime = await start_runtime(settings, stack)
            store, runners, metrics = runtime.store, runtime.runners, runtime.metrics
            router = Router(runtime.configs)
            engine = None
            if settings.engine:
                engine = Engine(store, runners, engine_settings(settings), time.time, metrics)
            limits = BatchLimits(
                max_requests=settings.max_requests_per_batch,
                ttl_seconds=settings.batch_ttl_seconds,
                retention_seconds=settings.results_retention_seconds,
            )
            services = Services(
                settings=settings,
                batches=BatchService(
                    store, router, limits, time.time, _on_created(metrics, engine)
                ),
                messages=MessageService(router, runners),
                auth=Authenticator(store, allow_open=is_loopback(settings.host)),
                router=router,
                runners=runners,
                tokens=TokenService(
                    router,
                    runtime.configs,
                    {name: runner.backend for name, runner in runners.items()},
                ),
                metrics=metrics,
                overview=Overview(store),
                bodies=BodyBudget.from_settings(settings),
            )
            if engine is not None:
                task = asyncio.create_task(engine.run(), name="engine")
                task.add_done_callback(_stop_process_when_engine_dies)
                stack.push_async_callback(_stop_engine, engine, task)
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
    )
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.include_router(batches.router)
    app.include_router(count_tokens.router)
    app.include_router(messages.router)
    app.include_router(models.router)
    app.include_router(prometheus.router)
    console.mount(app)
    openapi.install(app)
    return app


def _on_created(metrics: Metrics, engine: Engine | None) -> Callable[[], None]:
    def created() -> None:
        metrics.batches_created.inc()
        if engine is not None:
            engine.wake()

    return created


async def _stop_engine(engine: Engine, task: asyncio.Task[None]) -> None:
    engine.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=30)
    except TimeoutError:
        task.cancel()
