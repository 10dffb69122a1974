"""The engine: claim -> run -> record called directly on a SQLite file with a clock the test
moves, and its scheduling promises seen through the SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchd.domain import Batch, ProcessingStatus
from batchd.engine import Engine, EngineSettings
from batchd.runtime import Runtime, build_services, open_runtime
from batchd.usecases.batches import BatchService
from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.clock import ManualClock
from tests.support.invariants import count_mismatches
from tests.support.server import make_settings, serve_batchd
from tests.support.upstream import FakeUpstream

SLOW = {"name": "slow", "kind": "mock", "models": ["slow-*"], "max_concurrency": 8}
HANGING = {**SLOW, "max_concurrency": 1, "latency_ms": 600_000}
TTL = 3600.0

# -- the engine called directly ------------------------------------------------------------


@dataclass
class Running:
    runtime: Runtime
    engine: Engine
    batches: BatchService
    clock: ManualClock


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """An engine at work on a private SQLite file, with the built-in mock and a backend
    whose answers never come (``slow-*``); its clock stands still until the test moves it."""
    clock = ManualClock(1_800_000_000.0)
    settings = make_settings(str(tmp_path / "e.db"), batch_ttl_seconds=TTL, backends=[HANGING])
    async with open_runtime(settings, clock) as runtime:
        engine = Engine(
            runtime.store,
            runtime.runners,
            EngineSettings(
                lease_seconds=settings.lease_seconds,
                poll_interval=settings.poll_interval_seconds,
                sweep_interval=settings.sweep_interval_seconds,
                claim_chunk=settings.claim_chunk,
                shutdown_grace=0.1,
            ),
            clock,
            runtime.metrics,
        )
        batches = (await build_services(runtime, engine)).batches
        task = asyncio.create_task(engine.run())
        yield Running(runtime, engine, batches, clock)
        engine.stop()
        await asyncio.wait_for(task, 30)
    assert count_mismatches(tmp_path / "e.db") == []


async def _until(batches: BatchService, batch_id: str, done: Callable[[Batch], bool]) -> Batch:
    """The batch once ``done`` holds for it (30 s at most: a bound on a hang)."""
    async with asyncio.timeout(30):
        while True:
            batch = await batches.get("default", batch_id)
            if done(batch):
                return batch
            await asyncio.sleep(0.01)


def _ended(batch: Batch) -> bool:
    return batch.processing_status is ProcessingStatus.ENDED


async def _create(batches: BatchService, *requests: dict[str, Any]) -> Batch:
    return await batches.create("default", json.dumps({"requests": list(requests)}).encode())


async def _results(batches: BatchService, batch_id: str) -> dict[str, str]:
    jsonl = b"".join([chunk async for chunk in await batches.results("default", batch_id)])
    lines = [json.loads(line) for line in jsonl.splitlines()]
    return {line["custom_id"]: line["result"]["type"] for line in lines}


async def test_the_engine_claims_runs_and_records_each_request(running: Running) -> None:
    batch = await _create(running.batches, *(mock_request(f"r{i}") for i in range(5)))

    ended = await _until(running.batches, batch.id, _ended)

    assert ended.counts.succeeded == 5
    assert ended.ended_at == running.clock()
    assert await _results(running.batches, batch.id) == {f"r{i}": "succeeded" for i in range(5)}


async def test_the_clock_passing_the_deadline_expires_what_has_not_run(running: Running) -> None:
    requests = [mock_request(f"r{i}", model="slow-1") for i in range(3)]
    batch = await _create(running.batches, *requests)
    in_flight = running.runtime.runners["slow"].pacer
    await _until(running.batches, batch.id, lambda _: in_flight.in_flight == 1)

    running.clock.advance(TTL)  # one request hangs on its backend, two are queued
    ended = await _until(running.batches, batch.id, _ended)

    assert ended.counts.expired == 3
    assert ended.ended_at == ended.expires_at
    assert await _results(running.batches, batch.id) == {f"r{i}": "expired" for i in range(3)}


# -- through the SDK -----------------------------------------------------------------------


def _upstream_backend(upstream: FakeUpstream, concurrency: int) -> dict[str, object]:
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": upstream.url,
        "models": ["claude-*"],
        "max_concurrency": concurrency,
        "adaptive_concurrency": False,
    }


def _prompts(prefix: str, n: int) -> list[dict[str, object]]:
    return [mock_request(f"{prefix}{i}", f"{prefix} {i}", model="claude-1") for i in range(n)]


def test_a_small_batch_is_not_held_back_by_a_big_one(
    start_server: StartServer, held: FakeUpstream
) -> None:
    server = start_server(backends=[_upstream_backend(held, 8)])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        big = client.messages.batches.create(requests=_prompts("big", 400))
        wait_until(lambda: held.active == 8, "the big batch did not fill the backend")
        small = client.messages.batches.create(requests=_prompts("small", 10))
        held.release()
        wait_ended(client, small.id)
        assert wait_ended(client, big.id).request_counts.succeeded == 400
    order = held.arrivals()
    small_calls = [i for i, key in enumerate(order) if key.startswith("small")]
    # Served in turn with the big batch's 392 waiting requests, not after them.
    assert len(small_calls) == 10
    assert max(small_calls) < 8 + 40, small_calls


def test_concurrency_limit_paces_a_backend(start_server: StartServer, held: FakeUpstream) -> None:
    server = start_server(backends=[_upstream_backend(held, 2)])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=_prompts("r", 6))
        wait_until(lambda: held.active == 2, "two calls did not start")
        held.release()
        ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 6
    assert held.peak == 2  # two at a time, never more


def _in_flight(url: str, backend: str) -> int:
    with anthropic.Anthropic(base_url=url, api_key="k") as client:
        status = client.get("/status/backends", cast_to=object)
    [row] = [b for b in status["data"] if b["name"] == backend]  # type: ignore[index]
    return int(row["in_flight"])


def test_stopping_returns_unfinished_work_for_the_next_start(tmp_path: Path) -> None:
    db = str(tmp_path / "restart.db")
    hanging = {**SLOW, "max_concurrency": 4, "latency_ms": 600_000}
    with serve_batchd(make_settings(db, backends=[hanging], lease_seconds=600)) as first:
        with anthropic.Anthropic(base_url=first.url, api_key="k") as client:
            batch = client.messages.batches.create(
                requests=[mock_request(f"r{i}", model="slow-1") for i in range(4)]
            )
        wait_until(lambda: _in_flight(first.url, "slow") == 4, "the four were not claimed")
    # A graceful stop hands the leases back: the next start need not wait 600 s for them.
    fast = {**SLOW, "latency_ms": 0}
    settings = make_settings(db, backends=[fast], lease_seconds=600)
    with (
        serve_batchd(settings) as second,
        anthropic.Anthropic(base_url=second.url, api_key="k") as client,
    ):
        ended = wait_ended(client, batch.id, timeout=60)
    assert ended.request_counts.succeeded == 4
