"""The composition root: settings -> store -> backends -> engine -> app, and the supervisor
that runs a process's parts side by side.

    batchd serve    serve(settings)   the HTTP server and (unless --no-engine) the engine
    batchd worker   work(settings)    the engine alone, one of many on a shared database

Each part runs in one ``asyncio.TaskGroup`` under a ``Supervisor``: SIGTERM or SIGINT
stops them all gracefully (the engine returns its leases, the server finishes the
requests it has); a part that ends on its own (the engine dies, the server cannot bind
its port) stops the others too, and the process then fails with ``ProcessFailed``. Nothing
else in batchd starts a loop, installs a signal handler or ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from batchd.api import create_app
from batchd.api.bodies import BodyBudget
from batchd.api.deps import Services
from batchd.api.serving import serving_options
from batchd.backends.fleet import fleet_slots, shared_buckets
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router, backend_configs, build_backends
from batchd.backends.runner import BackendRunner, build_runners
from batchd.config import BackendConfig, Settings
from batchd.domain import BatchDialect
from batchd.engine import Engine, EngineSettings
from batchd.engine.webhooks import WebhookSender, WebhookSettings
from batchd.metrics import Metrics
from batchd.store import Store, Timeouts, open_store
from batchd.usecases.batches import BatchLimits, BatchService
from batchd.usecases.estimate import EstimateService
from batchd.usecases.files import FileLimits, FileService
from batchd.usecases.keys import Authenticator, decide_open_mode
from batchd.usecases.messages import MessageService
from batchd.usecases.openai_batches import OpenAIBatchService
from batchd.usecases.overview import Overview
from batchd.usecases.tokens import TokenService
from batchd.usecases.usage import Prices, UsageService
from batchd.usecases.webhooks import WebhookService

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ENGINE_STOP_SECONDS = 30.0  # after this, an engine still stopping is cancelled
GRACEFUL_SHUTDOWN_SECONDS = 10  # uvicorn's wait for the requests in progress


class ProcessFailed(Exception):
    """A part of the process ended on its own: the engine died or the server did not start."""


# -- building ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Runtime:
    """What every role runs on: the store, the backends ready to call, metrics, the clock."""

    settings: Settings
    store: Store
    configs: list[BackendConfig]
    runners: dict[str, BackendRunner]
    metrics: Metrics
    clock: Clock


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, clock: Clock = time.time) -> AsyncIterator[Runtime]:
    """Open the store and start every backend; close them again on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        timeouts = Timeouts(
            settings.db_connect_timeout_seconds, settings.db_statement_timeout_seconds
        )
        store = await open_store(settings.db, timeouts=timeouts)
        stack.push_async_callback(store.close)
        backends = build_backends(settings)
        for backend in backends.values():
            await backend.start()
            stack.push_async_callback(backend.close)
        configs = backend_configs(settings)
        metrics = Metrics()
        policy = RetryPolicy(
            settings.max_retries, settings.retry_base_seconds, settings.retry_max_seconds
        )
        buckets = None
        if store.driver.dialect == "postgresql":  # several workers: one budget for them all
            buckets = shared_buckets(store.draw_budget)
        runners = build_runners(backends, configs, policy, metrics, buckets)
        if store.driver.dialect == "postgresql":  # one concurrency cap for them all
            caps = {c.name: c.fleet_max_concurrency for c in configs}
            pacers = [(r.pacer, caps[name]) for name, r in runners.items()]
            await stack.enter_async_context(
                fleet_slots(pacers, store, metrics, settings.lease_seconds, clock)
            )
        yield Runtime(settings, store, configs, runners, metrics, clock)


def build_engine(runtime: Runtime) -> Engine:
    settings = runtime.settings
    engine_settings = EngineSettings(
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval_seconds,
        sweep_interval=settings.sweep_interval_seconds,
        claim_chunk=settings.claim_chunk,
        max_attempts=settings.max_attempts,
        retention=settings.results_retention_seconds,
        purge_interval=settings.purge_interval_seconds,
        purge_chunk=settings.purge_chunk,
    )
    sender = WebhookSender(runtime.store, webhook_settings(settings), runtime.clock)
    return Engine(
        runtime.store, runtime.runners, engine_settings, runtime.clock, runtime.metrics, sender
    )


def webhook_settings(settings: Settings) -> WebhookSettings:
    return WebhookSettings(
        timeout_seconds=settings.webhook_timeout_seconds,
        retry_base_seconds=settings.webhook_retry_base_seconds,
        retry_max_seconds=settings.webhook_retry_max_seconds,
        retry_window_seconds=settings.webhook_retry_window_seconds,
        allow_private_urls=settings.webhook_allow_private_urls,
        poll_interval=settings.poll_interval_seconds,
    )


async def build_services(runtime: Runtime, engine: Engine | None) -> Services:
    """The use cases the API serves; a batch created wakes ``engine``, if this process has one."""
    settings, store, runners = runtime.settings, runtime.store, runtime.runners
    router = Router(runtime.configs)
    tokens = TokenService(
        router, runtime.configs, {name: runner.backend for name, runner in runners.items()}
    )
    limits = BatchLimits(
        settings.max_requests_per_batch,
        settings.batch_ttl_seconds,
        settings.results_retention_seconds,
        # the workspace's quotas
        settings.max_unfinished_batches_per_workspace,
        settings.max_queued_requests_per_workspace,
        settings.max_queued_input_tokens_per_workspace,
    )
    metrics = runtime.metrics

    return Services(
        settings=settings,
        clock=runtime.clock,
        batches=BatchService(
            store,
            router,
            limits,
            runtime.clock,
            _on_created(metrics, engine, BatchDialect.ANTHROPIC),
        ),
        messages=MessageService(router, runners),
        auth=Authenticator(store, open_mode=await decide_open_mode(store, settings.host)),
        router=router,
        runners=runners,
        tokens=tokens,
        metrics=runtime.metrics,
        overview=Overview(store),
        bodies=BodyBudget.from_settings(settings),
        files=FileService(
            store, FileLimits(settings.max_file_bytes, settings.max_file_lines), runtime.clock
        ),
        openai_batches=OpenAIBatchService(
            store, router, limits, runtime.clock, _on_created(metrics, engine, BatchDialect.OPENAI)
        ),
        webhooks=WebhookService(
            store, runtime.clock, allow_private_urls=settings.webhook_allow_private_urls
        ),
        usage=UsageService(store, prices_of(settings), runtime.clock),
        estimates=EstimateService(
            router, tokens, prices_of(settings), settings.max_requests_per_batch
        ),
    )


def prices_of(settings: Settings) -> Prices:
    return Prices(settings.prices, settings.price_currency)


def _on_created(
    metrics: Metrics, engine: Engine | None, dialect: BatchDialect
) -> Callable[[], None]:
    def created() -> None:
        metrics.batches_created.labels(dialect).inc()
        if engine is not None:
            engine.wake()

    return created


def server_config(app: FastAPI, settings: Settings, *, log_level: str = "info") -> uvicorn.Config:
    """How uvicorn serves the app: the one place its options are chosen."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        **serving_options(settings),
    )


# -- running -----------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers (the supervisor owns the signals),
    telling ``on_started`` when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.on_started: Callable[[], None] = lambda: None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_started()


class Supervisor:
    """Runs the server and the engine (either may be absent) until both have stopped.

    ``stop()`` (SIGTERM, SIGINT) stops both gracefully; a part that ends on its own stops
    the other, and ``run`` then raises ``ProcessFailed``. ``started`` is called once the
    server listens (at once when there is none)."""

    def __init__(
        self,
        server: Server | None,
        engine: Engine | None,
        started: Callable[[Supervisor], None] = lambda _: None,
    ) -> None:
        self._server = server
        self._engine = engine
        self._started = started
        if server is not None:
            server.on_started = lambda: started(self)
        self._stopping = False
        self._failure: str | None = None
        self._engine_deadline: asyncio.Timeout | None = None

    @property
    def port(self) -> int:
        """The port the server listens on (once started)."""
        assert self._server is not None
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._engine is not None:
            self._engine.stop()
            self._limit_engine_stop()

    def _limit_engine_stop(self) -> None:
        if self._engine_deadline is not None:
            loop = asyncio.get_running_loop()
            self._engine_deadline.reschedule(loop.time() + ENGINE_STOP_SECONDS)

    async def run(self, *, signals: bool = True) -> None:
        """Run until stopped; ``signals``: SIGTERM and SIGINT stop (main thread only)."""
        with self._signals() if signals else contextlib.nullcontext():
            async with asyncio.TaskGroup() as group:
                if self._server is not None:
                    group.create_task(self._serve(self._server), name="server")
                if self._engine is not None:
                    group.create_task(self._run_engine(self._engine), name="engine")
                if self._server is None:
                    self._started(self)
        if self._failure is not None:
            raise ProcessFailed(self._failure)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT)
        for signum in handled:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping and self._server is not None:
            log.warning("%s again: not waiting for the requests in progress", name)
            self._server.force_exit = True
        log.info("%s: stopping", name)
        self.stop()

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self.stop()

    async def _serve(self, server: Server) -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn's way to say it could not start (a port in use)
            log.critical("the HTTP server could not start; stopping the process")
            self._fail(f"the HTTP server could not start (uvicorn exit status {exc.code})")
        else:
            if not self._stopping:
                log.critical("the HTTP server stopped on its own; stopping the process")
                self._fail("the HTTP server stopped on its own")

    async def _run_engine(self, engine: Engine) -> None:
        try:
            async with asyncio.timeout(None) as deadline:
                self._engine_deadline = deadline
                if self._stopping:
                    self._limit_engine_stop()
                try:
                    await engine.run()
                finally:
                    self._engine_deadline = None
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                log.error("the engine did not stop within %s s; abandoned", ENGINE_STOP_SECONDS)
                return
            log.critical("the engine died; stopping the process", exc_info=True)
            self._fail(f"the engine died: {_describe(exc)}")
        else:
            if not self._stopping:
                log.critical("the engine stopped on its own; stopping the process")
                self._fail("the engine stopped on its own")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (``uvicorn[standard]`` brings it), as ``uvicorn.run``
    would choose; else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover  (a platform without uvloop)
        return None
    return uvloop.new_event_loop


def run(role: Coroutine[Any, Any, None]) -> None:
    """Run a role (``serve(...)``, ``work(...)``) to its end on the loop of ``loop_factory``."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(role)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, or of each one in a group (the engine's TaskGroup)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def serve(
    settings: Settings,
    *,
    log_level: str = "info",
    clock: Clock = time.time,
    signals: bool = True,
    started: Callable[[Supervisor], None] = lambda _: None,
) -> None:
    """``batchd serve``: the API, and the engine unless ``settings.engine`` is off."""
    async with open_runtime(settings, clock) as runtime:
        engine = build_engine(runtime) if settings.engine else None
        app = create_app(await build_services(runtime, engine))
        config = server_config(app, settings, log_level=log_level)
        await Supervisor(Server(config), engine, started).run(signals=signals)


async def work(
    settings: Settings,
    *,
    clock: Clock = time.time,
    signals: bool = True,
    started: Callable[[Supervisor], None] = lambda _: None,
) -> None:
    """``batchd worker``: the engine alone."""
    async with open_runtime(settings, clock) as runtime:
        await Supervisor(None, build_engine(runtime), started).run(signals=signals)
