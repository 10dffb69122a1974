"""Pacing and lanes against fake upstreams that stand for real ones (issue 16's five targets).

* ``capped``: an upstream admitting C = 16 calls of 200 ms and answering 429 above, a batch
  with ``max_concurrency = 256``: the share of the capacity used (measured at the upstream:
  call-seconds served over C times the time) and of calls rejected;
* ``rpm_headers``: a requests-per-minute budget published in Anthropic's headers: the share
  of the budget used (from the first call to the last) and of calls rejected;
* ``queueing``: never a 429, latency ``latency * calls / 16`` past 16 calls in progress:
  throughput against its best (16 / latency) and the mean concurrency against the knee;
* ``fleet``: three `batchd worker` processes on one PostgreSQL sharing one configured
  requests-per-minute budget (no headers): budget used, calls rejected;
* ``fleet_cap``: three `batchd worker` processes sharing ``fleet_max_concurrency = 16``
  (each with ``max_concurrency = 256``) against the upstream of ``capped``: the share of its
  capacity used and of calls rejected;
* ``interactive``: a batch saturating a 16-slot backend of 200 ms calls while interactive
  calls come one after another: their p99 latency against one upstream call, over every
  call, the first (which finds the batch in every slot) included; the slowest and the first
  call; and the share of the 16 slots the batch's calls kept busy meanwhile.

The fake upstreams run in this process (tests/support/upstream.py), batchd in its own.
Rows hold numbers only (the smoke test checks that each is positive): ``accepted`` is the
share of upstream calls not refused; the goals are in the README's table.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic
from tests.support.budget import RequestBudget
from tests.support.cluster import Cluster, backend_table, run_batchd
from tests.support.postgres import find_bin
from tests.support.upstream import FakeUpstream, serve_upstream

from bench import harness, workload
from bench.postgres import Databases
from bench.scenarios import batch_body

Row = dict[str, Any]


def _backend(url: str, **options: Any) -> dict[str, Any]:
    return {"name": "upstream", "kind": "anthropic", "base_url": url, "models": ["claude-*"],
            "max_retries": 50, **options}  # fmt: skip


def _run_batch(workdir: Path, upstream: FakeUpstream, n: int, **options: Any) -> float:
    """One batch of ``n`` through a fresh batchd; the seconds it took."""
    with harness.batchd(workdir, backends=[_backend(upstream.url, **options)]) as server:
        batch = harness.post_json(f"{server.url}/v1/messages/batches", batch_body(n))
        started = time.perf_counter()
        ended = harness.wait_ended(server.url, batch["id"])
        assert ended["request_counts"]["succeeded"] == n, ended["request_counts"]
        return time.perf_counter() - started


def capped(n: int, latency: float, workdir: Path) -> Row:
    with serve_upstream(latency=latency, capacity=16) as upstream:
        _run_batch(workdir / "capped", upstream, n, max_concurrency=256)
        served, span = upstream.busy()
        rejected = upstream.rejected
    return {"capped_requests": n, "of_capacity": round(served / (16 * span), 3),
            "accepted": round(1 - rejected / (n + rejected), 4)}  # fmt: skip


def rpm_headers(n: int, per_minute: float, workdir: Path) -> Row:
    budget = RequestBudget(per_minute, burst_seconds=10)
    with serve_upstream(latency=0.05, budget=budget) as upstream:
        _run_batch(workdir / "rpm", upstream, n, max_concurrency=256)
        used = budget.used_share()
        del upstream
    return {"headers_rpm": per_minute, "requests": n, "of_budget": round(used, 3),
            "accepted": round(budget.admitted / (budget.admitted + budget.refused), 4)}  # fmt: skip


def queueing(n: int, latency: float, workdir: Path) -> Row:
    knee = 16
    with serve_upstream(latency=latency, knee=knee) as upstream:
        took = _run_batch(workdir / "queueing", upstream, n, max_concurrency=256)
        levels = upstream.levels_at_admission()
    steady = levels[len(levels) // 4 :]
    return {"queueing_knee": knee, "requests": n, "of_best": round(n / took / (knee / latency), 3),
            "concurrency_of_knee": round(statistics.mean(steady) / knee, 2)}  # fmt: skip


def _three_workers(
    n: int, workdir: Path, databases: Databases, upstream: FakeUpstream, **options: Any
) -> None:
    """One batch of ``n`` through an API process and three `batchd worker`s on a fresh
    PostgreSQL database, their backend configured with ``options``."""
    db = databases.fresh()
    run_batchd("migrate", "--db", db).check_returncode()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(workdir, db, upstream.url)
    cluster.config.write_text(backend_table(upstream.url, max_retries=50, **options))
    try:
        cluster.start_api()
        cluster.start_workers(3)
        time.sleep(1.0)  # the workers are up and listening
        with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
            requests: Any = workload.requests(n)
            batch = client.messages.batches.create(requests=requests)
            while client.messages.batches.retrieve(batch.id).processing_status != "ended":
                time.sleep(0.05)
    finally:
        cluster.stop()


def fleet(n: int, per_minute: float, workdir: Path, databases: Databases) -> Row | None:
    if find_bin() is None:
        return None  # no PostgreSQL server installed
    budget = RequestBudget(per_minute, burst_seconds=10, style="none")
    with serve_upstream(latency=0.05, budget=budget) as up:
        options = {"max_concurrency": 64, "requests_per_minute": per_minute}
        _three_workers(n, workdir / "fleet", databases, up, **options)
        used = budget.used_share()
    return {"fleet_workers": 3, "fleet_rpm": per_minute, "requests": n,
            "of_budget": round(used, 3),
            "accepted": round(budget.admitted / (budget.admitted + budget.refused), 4)}  # fmt: skip


def fleet_cap(n: int, latency: float, workdir: Path, databases: Databases) -> Row | None:
    if find_bin() is None:
        return None  # no PostgreSQL server installed
    with serve_upstream(latency=latency, capacity=16) as up:
        options = {"max_concurrency": 256, "adaptive_concurrency": True,
                   "fleet_max_concurrency": 16}  # fmt: skip
        _three_workers(n, workdir / "fleet_cap", databases, up, **options)
        served, span = up.busy()
        rejected, peak = up.rejected, up.peak
    return {"fleet_cap_workers": 3, "fleet_max_concurrency": 16, "requests": n,
            "of_capacity": round(served / (16 * span), 3), "peak": peak,
            "accepted": round(1 - rejected / (n + rejected), 4)}  # fmt: skip


def interactive(calls: int, latency: float, workdir: Path) -> Row:
    with serve_upstream(latency=latency) as upstream:
        backend = _backend(upstream.url, max_concurrency=16, adaptive_concurrency=False)
        with harness.batchd(workdir / "interactive", backends=[backend]) as server:
            # enough to keep the backend saturated while the calls come (each about one call)
            body = batch_body(16 * calls + 400)
            batch = harness.post_json(f"{server.url}/v1/messages/batches", body)
            with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client:
                while upstream.active < 16:  # the batch saturates the backend
                    time.sleep(0.01)
                took = []
                answered, began = upstream.admitted, time.perf_counter()
                for i in range(calls):
                    started = time.perf_counter()
                    client.messages.create(
                        model="claude-bench", max_tokens=8,
                        messages=[{"role": "user", "content": f"interactive {i}"}],
                    )  # fmt: skip
                    took.append(time.perf_counter() - started)
                batch_calls = upstream.admitted - answered - calls
                batch_share = batch_calls * latency / (16 * (time.perf_counter() - began))
                busy = upstream.active
                client.messages.batches.cancel(batch["id"])
    p99 = harness.percentile(took, 99)
    return {"interactive_calls": calls, "p99_s": round(p99, 3),
            "of_one_call": round(p99 / latency, 2), "slowest_s": round(max(took), 3),
            "first_s": round(took[0], 3), "batch_of_slots": round(batch_share, 3),
            "batch_in_flight": busy}  # fmt: skip


def pacing(size: dict[str, Any], workdir: Path, databases: Databases) -> list[Row]:
    work = Path(tempfile.mkdtemp(dir=workdir))
    rows = [
        capped(size["capped"], 0.2, work),
        rpm_headers(size["rpm"], size["rpm_budget"], work),
        queueing(size["queueing"], 0.1, work),
        fleet(size["fleet"], size["fleet_budget"], work, databases),
        fleet_cap(size["fleet_cap"], 0.2, work, databases),
        interactive(size["interactive"], 0.2, work),
    ]
    return [row for row in rows if row is not None]
