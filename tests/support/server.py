"""batchd, or an ASGI app (a fake upstream), under a real uvicorn server on a loopback port,
in a thread."""

from __future__ import annotations

import asyncio
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from batchd import runtime
from batchd.api import create_app
from batchd.config import Settings
from batchd.runtime import Clock, Server, Supervisor

STARTUP_SECONDS = 30


@dataclass(frozen=True)
class RunningServer:
    url: str
    port: int
    settings: Settings | None = None


@contextmanager
def serve_app(app: Any, *, port: int = 0, **options: Any) -> Iterator[RunningServer]:
    """Serve ``app`` (a fake upstream) until the block exits; the port is chosen by the OS
    unless given. ``options`` go to ``uvicorn.Config``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = Server(config)
    listening = threading.Event()
    server.on_started = listening.set
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    if not listening.wait(STARTUP_SECONDS):
        server.should_exit = True
        raise RuntimeError("the server did not start")
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(url=f"http://127.0.0.1:{bound}", port=bound)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_batchd(settings: Settings, *, clock: Clock = time.time) -> Iterator[RunningServer]:
    """batchd as ``batchd serve`` runs it (``batchd.runtime.serve``), in a thread, with its
    engine unless the settings turn it off. A failure of the process fails the test."""
    started: queue.Queue[tuple[asyncio.AbstractEventLoop, Supervisor] | None] = queue.Queue()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                runtime.serve(
                    settings,
                    log_level="warning",
                    clock=clock,
                    signals=False,
                    started=lambda supervisor: started.put(
                        (asyncio.get_running_loop(), supervisor)
                    ),
                )
            )
        except BaseException as exc:  # handed to the test below
            failures.append(exc)
        finally:
            started.put(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    running = started.get(timeout=STARTUP_SECONDS)
    if running is None:
        raise RuntimeError("batchd did not start") from (failures[0] if failures else None)
    loop, supervisor = running
    try:
        yield RunningServer(
            url=f"http://127.0.0.1:{supervisor.port}", port=supervisor.port, settings=settings
        )
    finally:
        loop.call_soon_threadsafe(supervisor.stop)
        thread.join(timeout=60)
    assert not thread.is_alive(), "batchd did not stop"
    if failures:
        raise failures[0]


def built_app() -> FastAPI:
    """The app as the composition root builds it (default settings, a throw-away SQLite
    file), for its routes and its document: what it was built on is closed again."""

    async def build(folder: str) -> FastAPI:
        async with runtime.open_runtime(Settings(db=f"sqlite:///{folder}/batchd.db")) as parts:
            return create_app(await runtime.build_services(parts, None))

    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(build(folder))


def make_settings(db_path: str, **overrides: Any) -> Settings:
    """Settings for tests: a private database, quick polling and sweeping."""
    values: dict[str, Any] = {
        "db": f"sqlite:///{db_path}",
        "host": "127.0.0.1",
        "port": 0,
        "poll_interval_seconds": 0.05,
        "sweep_interval_seconds": 0.1,
        "lease_seconds": 5.0,
        "retry_base_seconds": 0.01,
        "retry_max_seconds": 0.2,
    }
    values.update(overrides)
    return Settings(**values)
