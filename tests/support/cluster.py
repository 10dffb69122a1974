"""batchd as separate processes on one database: ``serve`` for the API (with or without
the engine) and any number of ``batchd worker`` processes, all against one fake upstream.
Every process can be SIGKILLed and started again on the same database and port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

QUICK_ENGINE = {  # lost leases come back within seconds
    "BATCHD_LEASE_SECONDS": "2",
    "BATCHD_SWEEP_INTERVAL_SECONDS": "0.2",
    "BATCHD_POLL_INTERVAL_SECONDS": "0.5",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def batchd_command() -> list[str]:
    script = shutil.which("batchd", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "batchd"]


def wait_until_serving(
    url: str, proc: subprocess.Popen[bytes], log: Callable[[], str], timeout: float = 30
) -> None:
    """Wait until ``url`` answers 200; fail with the process's log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"batchd exited early:\n{log()}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"batchd did not start:\n{log()}"
        time.sleep(0.05)


def run_batchd(*args: str) -> subprocess.CompletedProcess[str]:
    """A one-off ``batchd`` command (migrate, keys ...), its output captured."""
    return subprocess.run(
        [*batchd_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def backend_table(upstream_url: str, **options: object) -> str:
    """The TOML of one anthropic backend serving ``claude-*`` from the fake upstream."""
    values: dict[str, object] = {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": upstream_url,
        "models": ["claude-*"],
        "max_concurrency": 32,
        "adaptive_concurrency": False,
        "max_retries": 2,
        "timeout_seconds": 10,
        **options,
    }
    lines = ["[[backends]]"]
    for key, value in values.items():  # JSON strings, lists and numbers are TOML too
        lines.append(
            f"{key} = {str(value).lower() if isinstance(value, bool) else json.dumps(value)}"
        )
    return "\n".join(lines) + "\n"


class Cluster:
    """One API process and N workers; ``kill_*`` is SIGKILL, nothing graceful."""

    def __init__(
        self,
        folder: Path,
        db: str,
        upstream_url: str,
        concurrency: int = 32,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "batchd.toml"
        self.config.write_text(backend_table(upstream_url, max_concurrency=concurrency))
        self.env = {**os.environ, **QUICK_ENGINE, **(env or {})}
        self.api: subprocess.Popen[bytes] | None = None
        self.api_engine = False
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [*batchd_command(), *args, "--db", self.db, "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_api(self, *, engine: bool = False) -> None:
        """Start ``batchd serve`` (the API only, unless ``engine``) and wait until it answers."""
        self.api_engine = engine
        args = ["serve", "--port", str(self.port), "--log-level", "warning"]
        self.api = self._spawn("api", args if engine else [*args, "--no-engine"])
        wait_until_serving(f"{self.url}/v1/models", self.api, lambda: self.log("api"))

    def kill_api(self) -> None:
        assert self.api is not None
        _kill(self.api)

    def restart_api(self) -> None:
        self.start_api(engine=self.api_engine)

    def start_workers(self, n: int) -> None:
        for _ in range(n):
            self.workers.append(self._spawn_worker(len(self.workers)))

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        return self._spawn(f"worker{index}", ["worker", "--log-level", "warning"])

    def kill_worker(self, index: int) -> None:
        _kill(self.workers[index])

    def restart_worker(self, index: int) -> None:
        assert self.workers[index].poll() is not None, "the worker is still running"
        self.workers[index] = self._spawn_worker(index)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def stop(self) -> None:
        """SIGTERM everything still running (workers return their leases), then wait."""
        procs = [p for p in [*self.workers, self.api] if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
