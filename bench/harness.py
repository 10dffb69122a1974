"""Running batchd and the fake upstream as separate processes, and measuring them."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.support.cluster import free_port, wait_until_serving

T = TypeVar("T")


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory of a process so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SQLITE_FILE = "bench.db"  # the database of ``batchd(workdir)`` when no URL is given


@dataclass(frozen=True)
class Process:
    url: str
    pid: int
    db: str  # the --db URL it serves


@contextmanager
def batchd(
    workdir: Path,
    *,
    engine: bool = True,
    backends: list[dict[str, Any]] | None = None,
    database: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Process]:
    """``batchd serve`` in its own process, on the SQLite file ``workdir / SQLITE_FILE``,
    or on ``database`` (a PostgreSQL URL, brought up to date by ``batchd migrate`` first);
    ``env``: more settings as ``BATCHD_*`` variables."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = database or f"sqlite:///{workdir / SQLITE_FILE}"
    config = workdir / "batchd.toml"
    config.write_text("\n".join(_backend_toml(b) for b in backends or []))
    log = workdir / "batchd.log"
    env = {**os.environ, **(env or {}), "BATCHD_ENGINE": "true" if engine else "false"}
    command = [sys.executable, "-m", "batchd.cli"]
    if database is not None:
        migrate = subprocess.run(
            [*command, "migrate", "--db", db], env=env, capture_output=True, check=False
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"batchd migrate failed:\n{migrate.stdout!r}{migrate.stderr!r}")
    args = ["serve", "--port", str(port), "--db", db, "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, *args, "--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/healthz", proc, log.read_text)
        yield Process(url, proc.pid, db)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _backend_toml(backend: dict[str, Any]) -> str:
    lines = ["[[backends]]"]
    for key, value in backend.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@contextmanager
def fake_upstream(latency: float) -> Iterator[str]:
    """An Anthropic-compatible upstream answering after ``latency`` s, in its own process."""
    port = free_port()
    log = Path(os.devnull)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", str(port), str(latency)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/healthz", proc, log.read_text)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def median_of(repeat: int, run: Callable[[], T], key: Callable[[T], float]) -> T:
    """Run ``repeat`` times; the run whose ``key`` is the median."""
    runs = [run() for _ in range(repeat)]
    runs.sort(key=key)
    return runs[len(runs) // 2]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def post_json(url: str, body: bytes, timeout: float = 600) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def get_json(url: str, timeout: float = 60) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def wait_for(url: str, done: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll the batch at ``url`` until ``done`` holds of it."""
    deadline = time.monotonic() + timeout
    while True:
        batch = get_json(url)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not end")
        time.sleep(0.02)


def wait_ended(url: str, batch_id: str, timeout: float = 600) -> dict[str, Any]:
    path = f"{url}/v1/messages/batches/{batch_id}"
    return wait_for(path, lambda batch: batch["processing_status"] == "ended", timeout)


def timed_create(server: Process, create: Callable[[], T]) -> tuple[float, float, float, T]:
    """The seconds ``create`` took on ``server``, the server's peak RSS after it and its
    idle RSS before (MiB), and what ``create`` answered."""
    idle = peak_rss_mib(server.pid)
    started = time.perf_counter()
    answer = create()
    took = time.perf_counter() - started
    return took, peak_rss_mib(server.pid), idle, answer


def ingest_figures(
    took: float, raw: float, rss: float, idle: float, mib: float, noun: str
) -> dict[str, Any]:
    """An ingest row's figures: ``noun`` (what was sent: body, file), of ``mib`` MiB, created
    in ``took`` seconds against the baseline's ``raw``, and the server's memory (MiB)."""
    return {
        f"{noun}_mib": round(mib, 1),
        "batchd_s": round(took, 3),
        "raw_s": round(raw, 3),
        "ratio": round(took / raw, 2),
        "peak_rss_mib": round(rss, 1),
        f"rss_over_{noun}": round(rss / mib, 2),
        f"growth_over_{noun}": round((rss - idle) / mib, 2),
    }


def throughput_figures(n: int, took: float, raw: float) -> dict[str, Any]:
    """A throughput row's figures: ``n`` requests in ``took`` seconds, the baseline's ``raw``."""
    return {
        "batchd_req_s": round(n / took),
        "raw_req_s": round(n / raw),
        "ratio": round(raw / took, 2),
    }
