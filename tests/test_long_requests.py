"""Long requests: an upstream call that outlives its lease, and the clock, by far.

Anthropic's batch-only 300,000-output-token option means one request can generate for
hours. Such a call must be neither cut by a timeout (unless the backend's
``timeout_seconds`` says so) nor run a second time beside itself because its lease ran
out while it was in flight. The engine runs here on a real SQLite file with a clock the
test moves by hand, against a real HTTP upstream that holds the call open until the test
lets it answer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse, MessageBatchSucceededResult

from batchd.backends.http import call_timeout
from batchd.domain import ProcessingStatus
from batchd.runtime import build_engine, build_services, open_runtime
from batchd.store import Sweep
from tests.support.clock import ManualClock
from tests.support.server import make_settings
from tests.support.upstream import serve_upstream

LEASE = 30.0  # the default lease; the heartbeat renews every 10 s of real time
JUMP = 600.0  # each move of the clock: twenty leases at once
JUMPS = 7  # 70 minutes in all
KEY = "write the longest answer you can"
MAX_TOKENS = 300_000


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (the test's timeout bounds the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)  # the upstream runs in a thread of its own


@pytest.mark.parametrize(
    ("configured", "max_tokens", "expected"),
    [
        (None, 1_024, 600.0),  # a short answer: the ten minutes of old
        (None, 8_192, 819.2),  # past 6,000 tokens, 1 s per 10 tokens
        (None, 300_000, 30_000.0),  # the batch-only 300,000 tokens: over 8 hours
        (None, None, 600.0),  # no output asked (count_tokens)
        (120.0, 300_000, 120.0),  # the backend's own timeout_seconds holds, long or not
    ],
)
def test_a_calls_timeout_grows_with_its_output_unless_set(
    configured: float | None, max_tokens: int | None, expected: float
) -> None:
    assert call_timeout(configured, max_tokens) == pytest.approx(expected)


async def test_a_call_longer_than_its_lease_and_an_hour_is_renewed_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(1_800_000_000.0)
    db = tmp_path / "long.db"
    with serve_upstream() as upstream:
        upstream.hold()
        backend = {
            "name": "long",
            "kind": "anthropic",
            "base_url": upstream.url,
            "models": ["claude-*"],
            "max_output_tokens": MAX_TOKENS,
        }
        settings = make_settings(str(db), lease_seconds=LEASE, backends=[backend])
        async with open_runtime(settings, clock) as runtime:
            swept: list[float] = []  # the clock's time of every sweep done
            a_sweep = asyncio.Event()
            sweep = runtime.store.sweep

            async def counted_sweep(now: float) -> Sweep:
                done = await sweep(now)
                swept.append(now)
                a_sweep.set()
                return done

            async def swept_at(moment: float) -> None:
                """Until the engine has swept with its clock at ``moment`` or later."""
                while not (swept and swept[-1] >= moment):
                    a_sweep.clear()
                    await a_sweep.wait()

            monkeypatch.setattr(runtime.store, "sweep", counted_sweep)
            engine = build_engine(runtime)
            batches = (await build_services(runtime, engine)).batches
            task = asyncio.create_task(engine.run())
            try:
                params = {
                    "model": "claude-long",
                    "max_tokens": MAX_TOKENS,
                    "messages": [{"role": "user", "content": KEY}],
                }
                body = {"requests": [{"custom_id": "long", "params": params}]}
                batch = await batches.create("default", msgspec.json.encode(body))
                await _until(lambda: upstream.active == 1)  # the call is in flight, held
                started = clock()
                for _ in range(JUMPS):
                    clock.advance(JUMP)
                    await swept_at(clock())
                assert clock() - started > 3600
                assert (upstream.calls(KEY), upstream.active) == (1, 1)  # still the first
                upstream.release()
                while batch.processing_status is not ProcessingStatus.ENDED:
                    await asyncio.sleep(0.01)
                    batch = await batches.get("default", batch.id)
                chunks = [chunk async for chunk in await batches.results("default", batch.id)]
            finally:
                engine.stop()
                await task
    lines = b"".join(chunks).splitlines()
    [result] = [MessageBatchIndividualResponse.model_validate_json(line) for line in lines]
    assert result.custom_id == "long"
    assert isinstance(result.result, MessageBatchSucceededResult)
    assert upstream.calls(KEY) == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT attempts FROM requests").fetchall() == [(1,)]
    sweeps_after_start = sum(1 for now in swept if now > started)
    assert sweeps_after_start >= JUMPS
