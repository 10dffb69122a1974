"""The composition root and its supervisor: how `batchd serve` and `batchd worker` start,
stop on a signal, and fail loudly when a part of the process dies."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvloop
from click.testing import CliRunner

from batchd import runtime
from batchd.cli import main
from batchd.store import Store, open_store
from tests.support.process import run_batchd


class _SweepFails:
    """The real store, but for a sweep that fails as a bug would (not StoreUnavailable,
    which the engine rides out): the engine dies of it."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def sweep(self, now: float) -> Any:
        raise RuntimeError(f"injected fault in Store.sweep at {now}")


@pytest.fixture
def engine_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    async def open_failing(url: str, **options: Any) -> Any:
        return _SweepFails(await open_store(url, **options))

    monkeypatch.setattr(runtime, "open_store", open_failing)
    monkeypatch.setenv("BATCHD_SWEEP_INTERVAL_SECONDS", "0.05")


def test_python_m_batchd_is_the_batchd_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "batchd", "--help"], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert "Usage: python -m batchd" in done.stdout
    assert "serve" in done.stdout
    assert "worker" in done.stdout


@pytest.mark.usefixtures("engine_dies")
@pytest.mark.parametrize("role", [["serve", "--port", "0"], ["worker"]], ids=["serve", "worker"])
def test_an_engine_that_dies_stops_the_process_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, role: list[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'b.db'}"

    done = CliRunner().invoke(main, [*role, "--db", db, "--log-level", "warning"])

    assert done.exit_code == 1, done.output
    assert "Error: the engine died: RuntimeError: injected fault in Store.sweep" in done.output
    [died] = [r for r in caplog.records if r.name == "batchd.runtime"]
    assert died.levelno == logging.CRITICAL
    assert died.getMessage() == "the engine died; stopping the process"
    assert died.exc_info is not None


def test_sigterm_stops_serve_cleanly(tmp_path: Path) -> None:
    with run_batchd(tmp_path, log_level="info") as server:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0, server.log()
    log = server.log()
    assert "SIGTERM: stopping" in log
    assert "engine" in log
    assert "stopped" in log


def test_serve_on_a_taken_port_exits_with_an_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "batchd",
                "serve",
                "--port",
                port,
                "--db",
                f"sqlite:///{tmp_path}/b.db",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert done.returncode == 1, done.stderr
    assert "Error: the HTTP server could not start" in done.stderr


def test_the_roles_run_on_uvloop() -> None:
    """As under ``uvicorn.run``: uvloop's event loop, where it is installed."""
    assert runtime.loop_factory() is uvloop.new_event_loop
