"""Running an ASGI app under a real uvicorn server on a loopback port, in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from batchd.api import create_app
from batchd.api.serving import serving_options
from batchd.config import Settings


@dataclass(frozen=True)
class RunningServer:
    url: str
    port: int
    settings: Settings | None = None


@contextmanager
def serve_app(app: Any, *, port: int = 0, **options: Any) -> Iterator[RunningServer]:
    """Serve ``app`` until the block exits; the port is chosen by the OS unless given.

    ``options`` go to ``uvicorn.Config``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start in 30 s")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(url=f"http://127.0.0.1:{bound}", port=bound)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_batchd(settings: Settings) -> Iterator[RunningServer]:
    app = create_app(settings)
    with serve_app(app, port=settings.port, **serving_options(settings)) as running:
        yield RunningServer(url=running.url, port=running.port, settings=settings)


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
