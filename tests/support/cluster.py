"""batchd as separate processes on one PostgreSQL database: ``serve --no-engine`` for the
API and any number of ``batchd worker`` processes, all against one fake upstream."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
    return [script] if script else [sys.executable, "-m", "batchd.cli"]


def run_batchd(*args: str) -> subprocess.CompletedProcess[str]:
    """A one-off ``batchd`` command (migrate, keys ...), its output captured."""
    return subprocess.run(
        [*batchd_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


class Cluster:
    """One API process and N workers; ``kill_worker`` is SIGKILL, nothing graceful."""

    def __init__(self, folder: Path, db: str, upstream_url: str, concurrency: int = 32) -> None:
        self.folder = folder
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "batchd.toml"
        self.config.write_text(
            "[[backends]]\n"
            'name = "upstream"\n'
            'kind = "anthropic"\n'
            f'base_url = "{upstream_url}"\n'
            'models = ["claude-*"]\n'
            f"max_concurrency = {concurrency}\n"
            "adaptive_concurrency = false\n"
            "max_retries = 2\n"
            "timeout_seconds = 10\n"
        )
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [*batchd_command(), *args, "--db", self.db, "--config", str(self.config)],
                env={**os.environ, **QUICK_ENGINE},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_api(self) -> None:
        self.api = self._spawn(
            "api",
            ["serve", "--no-engine", "--port", str(self.port), "--log-level", "warning"],
        )
        deadline = time.monotonic() + 20
        while True:
            assert self.api.poll() is None, self.log("api")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, self.log("api")
            time.sleep(0.05)

    def start_workers(self, n: int) -> None:
        for _ in range(n):
            name = f"worker{len(self.workers)}"
            self.workers.append(self._spawn(name, ["worker", "--log-level", "warning"]))

    def kill_worker(self, index: int) -> None:
        self.workers[index].send_signal(signal.SIGKILL)
        self.workers[index].wait(timeout=10)

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
