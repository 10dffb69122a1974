"""Admission control: the adaptive limit, who gets a freed slot first, and rate budgets."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from batchd.backends.pacing import (
    LATENCY_MAX_CUT,
    LATENCY_TARGET,
    PREFETCH_SHARE,
    PROBE_WINDOWS,
    PROBE_WINDOWS_MAX,
    SLOW_START_FROM,
    SLOW_START_GAIN,
    SYNC_RESERVE_ROUND_TRIPS,
    Call,
    Lane,
    LimitSource,
    Pacer,
    Slot,
    TokenBucket,
)
from batchd.config import BackendConfig
from batchd.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pacer(clock: Clock | None = None, **config: object) -> Pacer:
    values: dict[str, object] = {"name": "b", "kind": "mock", "max_concurrency": 16}
    values.update(config)
    return Pacer(BackendConfig.model_validate(values), Metrics(), clock=clock or Clock())


def test_congestion_halves_the_limit_once_per_round_trip() -> None:
    clock = Clock()
    pacer = _pacer(clock)
    pacer.succeeded(latency=1.0)  # a round trip takes about a second
    pacer.failed("rate_limit_error", "slow down")
    pacer.failed("overloaded_error", "busy")  # the same window: no second cut
    assert pacer.limit == 8
    clock.now += 1.0
    pacer.failed("timeout_error", "timed out")
    assert pacer.limit == 4


@pytest.mark.parametrize(
    ("error_type", "limit"),
    [
        ("rate_limit_error", 8),  # 429
        ("overloaded_error", 8),  # 529
        ("timeout_error", 8),
        ("api_error", 16),  # a 500 is no sign of congestion
        ("invalid_request_error", 16),
    ],
)
def test_only_congestion_lowers_the_limit(error_type: str, limit: int) -> None:
    pacer = _pacer()
    pacer.failed(error_type, "x")
    assert pacer.limit == limit
    assert pacer.last_error is not None
    assert pacer.last_error["type"] == error_type


def test_successes_grow_the_limit_by_one_per_window_up_to_max() -> None:
    pacer = _pacer(initial_concurrency=4, max_concurrency=6)
    for _ in range(4):
        pacer.succeeded(latency=0.1)
    assert pacer.limit == 5
    for _ in range(100):
        pacer.succeeded(latency=0.1)
    assert pacer.limit == 6


def test_limit_never_falls_below_min() -> None:
    clock = Clock()
    pacer = _pacer(clock, min_concurrency=3)
    for _ in range(10):
        clock.now += 10
        pacer.failed("rate_limit_error", "x")
    assert pacer.limit == 3


def test_a_fixed_limit_does_not_adapt() -> None:
    pacer = _pacer(adaptive_concurrency=False, max_concurrency=5)
    pacer.failed("rate_limit_error", "x")
    assert pacer.limit == 5


async def test_a_freed_slot_goes_to_interactive_then_retrying_then_batch() -> None:
    # the limit holds for every call: the interactive call waits too
    pacer = _pacer(max_concurrency=2, adaptive_concurrency=False, interactive_extra_slot=False)
    woken: list[str] = []
    pacer.on_free(lambda: woken.append("batch"))
    busy = [pacer.take(), pacer.take()]
    retry = asyncio.create_task(pacer.acquire(interactive=False))
    interactive = asyncio.create_task(pacer.acquire(interactive=True))
    await asyncio.sleep(0)
    assert (pacer.free_for_batch(), pacer.waiting) == (0, 2)
    busy[0].release()
    await asyncio.sleep(0)
    assert (interactive.done(), retry.done(), woken) == (True, False, [])
    busy[1].release()
    await asyncio.sleep(0)
    assert (retry.done(), woken) == (True, [])
    interactive.result().release()
    assert (pacer.free_for_batch(), woken) == (1, ["batch"])


async def test_batch_work_claimed_ahead_takes_the_next_slot_freed() -> None:
    pacer = _pacer(max_concurrency=16, adaptive_concurrency=False)
    busy = [pacer.take() for _ in range(16)]
    ahead = 16 // PREFETCH_SHARE
    assert (pacer.free_for_batch(), pacer.room_for_batch()) == (0, ahead)
    early = [pacer.take() for _ in range(ahead)]  # claimed before any slot is free
    assert (any(slot.held for slot in early), pacer.in_flight) == (False, 16)
    waiting = [asyncio.create_task(slot.reacquire()) for slot in early]
    await asyncio.sleep(0)
    assert (pacer.room_for_batch(), pacer.waiting) == (0, ahead)
    busy[0].release()
    await asyncio.sleep(0)
    assert (waiting[0].done(), early[0].held, pacer.in_flight) == (True, True, 16)
    assert pacer.room_for_batch() == 1  # room to claim the next one ahead
    for task in waiting[1:]:
        task.cancel()
    await asyncio.gather(*waiting[1:], return_exceptions=True)
    assert (pacer.waiting, pacer.in_flight) == (0, 16)


async def test_while_synchronous_calls_come_batch_work_leaves_them_a_slot() -> None:
    clock = Clock()
    pacer = _pacer(clock, max_concurrency=4, adaptive_concurrency=False)
    pacer.succeeded(latency=1.0)  # a round trip takes a second
    assert pacer.free_for_batch() == 4
    (await pacer.acquire(interactive=True)).release()
    busy = [pacer.take() for _ in range(pacer.free_for_batch())]
    assert len(busy) == 3  # one slot kept for the next synchronous call
    second = await asyncio.wait_for(pacer.acquire(interactive=True), timeout=5)  # no wait
    second.release()
    clock.now += SYNC_RESERVE_ROUND_TRIPS * 1.0  # none for a while: batch work may take it
    assert pacer.free_for_batch() == 1


async def test_an_interactive_call_finding_batch_work_in_every_slot_takes_one_more() -> None:
    clock = Clock()
    pacer = _pacer(clock, max_concurrency=4, adaptive_concurrency=False)
    pacer.succeeded(latency=1.0)  # a round trip takes a second
    busy = _hold(pacer, 4)
    first = await asyncio.wait_for(pacer.acquire(interactive=True), timeout=5)  # no wait
    assert pacer.in_flight == 5
    second = asyncio.create_task(pacer.acquire(interactive=True))  # one past the limit at most
    flex = asyncio.create_task(pacer.acquire(lane=Lane.FLEX))  # flex calls wait for capacity
    await asyncio.sleep(0)
    assert (second.done(), flex.done(), pacer.free_for_batch()) == (False, False, 0)
    busy[0].release()  # back at the limit: no slot is free yet
    await asyncio.sleep(0)
    assert (second.done(), pacer.in_flight) == (False, 4)
    busy[1].release()
    await asyncio.sleep(0)
    assert (second.done(), flex.done(), pacer.in_flight) == (True, False, 4)
    first.release()
    await asyncio.sleep(0)
    assert (flex.done(), pacer.free_for_batch()) == (True, 0)
    second.result().release()
    flex.result().release()
    assert pacer.free_for_batch() == 1  # batch work leaves one slot for the next call ...
    clock.now += SYNC_RESERVE_ROUND_TRIPS * 1.0
    assert pacer.free_for_batch() == 2  # ... while they come: never past the limit


async def _waits(pacer: Pacer, clock: Clock) -> bool:
    """Whether an interactive call waits while batch work holds every slot of the limit."""
    clock.now += 60  # no synchronous call for a minute: batch work may take every slot
    _hold(pacer, pacer.limit - pacer.in_flight)
    assert pacer.in_flight == pacer.limit
    call = asyncio.create_task(pacer.acquire(interactive=True))
    await asyncio.sleep(0)
    waits = not call.done()
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    if not waits:
        call.result().release()
    return waits


@pytest.mark.parametrize(
    ("config", "refused"),
    [
        ({"adaptive_concurrency": False}, True),  # a fixed limit, a call refused at it
        ({}, True),  # an adaptive one, lowered by a refusal
        ({"interactive_extra_slot": False}, False),  # switched off
        ({"fleet_max_concurrency": 2}, False),  # a fleet's cap is a ceiling for every call
    ],
)
async def test_no_interactive_call_goes_past_a_limit_it_may_not_pass(
    config: dict[str, object], refused: bool
) -> None:
    clock = Clock()
    pacer = _pacer(clock, max_concurrency=2, **config)
    if refused:
        pacer.failed("rate_limit_error", "over capacity")  # the limit may be the upstream's
    assert await _waits(pacer, clock)
    assert pacer.in_flight == pacer.limit


async def test_the_extra_slot_comes_back_once_the_upstream_admits_more_than_it_refused() -> None:
    clock = Clock()
    pacer = _pacer(clock, max_concurrency=16)
    pacer.failed("rate_limit_error", "over capacity")  # the limit falls to 8
    assert await _waits(pacer, clock)
    for _ in range(8):  # a window of calls started past those 8 got through
        pacer.succeeded(latency=0.1, call=_call(pacer, level=9))
    assert not await _waits(pacer, clock)


async def test_a_cancelled_waiter_leaks_no_slot() -> None:
    pacer = _pacer(max_concurrency=1, adaptive_concurrency=False, interactive_extra_slot=False)
    slot = pacer.take()
    waiter = asyncio.create_task(pacer.acquire(interactive=True))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    slot.release()
    slot.release()  # twice is harmless
    assert (pacer.in_flight, pacer.waiting, pacer.free_for_batch()) == (0, 0, 1)


async def test_token_bucket_paces_takers() -> None:
    bucket = TokenBucket(rate=50.0, capacity=5.0, clock=time.monotonic)
    started = time.monotonic()
    for _ in range(10):
        await bucket.take(1)
    # Five from the full bucket, five more at 50 per second: about 0.1 s.
    assert 0.08 <= time.monotonic() - started < 0.5


async def test_token_bucket_charges_the_true_cost_later() -> None:
    bucket = TokenBucket(rate=1.0, capacity=100.0, clock=time.monotonic)
    await bucket.take(10)
    bucket.adjust(85)  # the call used 95, not 10
    started = time.monotonic()
    await asyncio.wait_for(bucket.take(5.5), timeout=5)
    assert time.monotonic() - started >= 0.4  # only 5 were left


async def test_a_huge_take_charges_at_most_a_full_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, capacity=100.0, clock=clock)
    assert await bucket.take(10**18) == 100.0  # an absurd max_tokens: one bucket, not 1e18
    clock.now += 1.0  # ten tokens' refill later
    await asyncio.wait_for(bucket.take(10), timeout=5)  # ready at once: no sleep needed
    assert bucket.level == 0.0


async def test_a_refund_wakes_the_waiter_at_once() -> None:
    clock = Clock()  # never advances: only the refund can let the waiter through
    bucket = TokenBucket(rate=1.0, capacity=100.0, clock=clock)
    await bucket.take(100)
    waiter = asyncio.create_task(bucket.take(50))  # would wait 50 s for the refill
    await asyncio.sleep(0)
    assert not waiter.done()
    bucket.adjust(-80)  # the first call used only 20 of its estimate
    assert await asyncio.wait_for(waiter, timeout=5) == 50.0
    assert bucket.level == 30.0


async def test_takers_are_served_in_order_and_charges_never_sink_below_a_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1.0, capacity=10.0, clock=clock)
    await bucket.take(10)
    bucket.adjust(10**9)  # a true cost far over the estimate: the debt stops at one bucket
    assert bucket.level == -10.0
    first = asyncio.create_task(bucket.take(5))
    second = asyncio.create_task(bucket.take(1))
    await asyncio.sleep(0)
    bucket.adjust(-15)  # level 5: the first in line gets it, the second keeps waiting
    await asyncio.wait_for(first, timeout=5)
    await asyncio.sleep(0)
    assert not second.done()
    bucket.adjust(-1)
    await asyncio.wait_for(second, timeout=5)


def _call(pacer: Pacer, level: int) -> Call:
    """A call started now, with ``level`` calls in flight."""
    return Call(seq=pacer.call_started().seq, level=level, started=0.0)


def test_a_remote_upstream_starts_low_and_grows_by_half_per_round_trip() -> None:
    pacer = _pacer(kind="anthropic", base_url="http://u", max_concurrency=256)
    assert (pacer.limit, pacer.source) == (SLOW_START_FROM, LimitSource.SLOW_START)
    for _ in range(SLOW_START_FROM):  # one round trip at the starting limit
        pacer.succeeded(latency=0.1, call=_call(pacer, level=SLOW_START_FROM))
    assert pacer.limit == int(SLOW_START_GAIN * SLOW_START_FROM)
    for _ in range(100):  # more successes, but no more calls in flight at once: no growth
        pacer.succeeded(latency=0.1, call=_call(pacer, level=SLOW_START_FROM))
    assert pacer.limit == int(SLOW_START_GAIN * SLOW_START_FROM)


def _hold(pacer: Pacer, n: int) -> list[Slot]:
    return [pacer.take() for _ in range(n)]


def test_a_429_lowers_the_limit_to_what_the_upstream_admitted() -> None:
    pacer = _pacer(max_concurrency=64)
    refused = _hold(pacer, 41)[-1]
    pacer.failed("rate_limit_error", "over capacity", _call(pacer, level=41))
    assert (pacer.limit, pacer.source) == (40, LimitSource.CONGESTION)
    refused.release()
    pacer.failed("rate_limit_error", "over capacity", _call(pacer, level=17))
    assert pacer.limit == 39  # another refusal of the burst: one fewer was admitted


def test_a_429_counts_only_the_calls_still_in_flight() -> None:
    pacer = _pacer(max_concurrency=40)
    slots = _hold(pacer, 40)
    calls = [_call(pacer, level=40) for _ in slots]
    for slot in slots[30:]:  # the other refusals of the burst, back and released
        slot.release()
    pacer.failed("rate_limit_error", "over capacity", calls[29])
    assert pacer.limit == 29  # the 30 still in flight, the refused one excluded
    for call in calls[:29]:  # the admitted ones answer: they say nothing of more room
        pacer.succeeded(latency=0.1, call=call)
    assert pacer.limit == 29


def test_a_lone_429_halves_the_limit_and_each_one_after_it_takes_one_more() -> None:
    pacer = _pacer(max_concurrency=16)
    pacer.failed("rate_limit_error", "over capacity", _call(pacer, level=1))
    assert pacer.limit == 8  # by half at most per round trip
    pacer.failed("rate_limit_error", "over capacity", _call(pacer, level=1))
    assert pacer.limit == 7  # a refusal lowers it by one at least


def test_above_a_refused_concurrency_the_limit_grows_only_every_few_windows() -> None:
    pacer = _pacer(max_concurrency=64)
    refused = _hold(pacer, 41)[-1]
    pacer.failed("rate_limit_error", "over capacity", _call(pacer, level=41))  # 40 admitted
    refused.release()
    for _ in range(40 * (PROBE_WINDOWS - 1)):
        pacer.succeeded(latency=0.1, call=_call(pacer, level=40))
    assert pacer.limit == 40
    for _ in range(40):
        pacer.succeeded(latency=0.1, call=_call(pacer, level=40))
    assert (pacer.limit, pacer.source) == (41, LimitSource.GROWTH)


@dataclass
class Run:
    """What a simulated run showed: the first burst of refusals (until a call succeeds again)
    and the refusals after it, the limit at the end and the share of the upstream's capacity
    used from the first refusal on."""

    overshoot: int = 0
    probes: int = 0
    limit: int = 0
    used: float = 0.0
    limits: list[int] = field(default_factory=list)  # the limit after each refusal
    levels: list[tuple[float, int]] = field(default_factory=list)  # (time, calls upstream)

    def mean_level(self, since: float) -> float:
        """The calls in progress upstream, averaged over time from ``since`` on."""
        start = self.levels[0][0] + since * (self.levels[-1][0] - self.levels[0][0])
        kept = [
            (b - a, level) for (a, level), (b, _) in itertools.pairwise(self.levels) if a >= start
        ]
        return sum(span * level for span, level in kept) / sum(span for span, _ in kept)


def _simulate(
    pacer: Pacer,
    clock: Clock,
    capacity: Callable[[float], int],
    n: int,
    *,
    latency: Callable[[int], float] = lambda _: 0.2,
    transit: float = 0.001,
) -> Run:
    """Drive ``pacer`` as the engine does, with ``n`` requests against an upstream that
    admits ``capacity(now)`` calls at once and refuses the rest at once (429), a call taking
    ``latency(calls in progress)`` seconds, on ``clock``: events in time order, ``transit``
    seconds each way, no sleeps. A refused request retries once a call started after its
    refusal succeeds."""
    events: list[tuple[float, int, str, Call, Slot]] = []
    sequence = itertools.count()
    queued, waiting = n, list[float]()  # new requests; refusal times of those to retry
    ready = 0  # refused requests that may retry now
    active, run, busy = 0, Run(), 0.0
    decreased_at: float | None = None  # the first refusal
    succeeded_after: float | None = None  # the first success after it
    last = clock.now
    while queued or ready or waiting or events:
        while pacer.free_for_batch() > 0 and (ready or queued):
            if ready:
                ready -= 1
            else:
                queued -= 1
            slot, call = pacer.take(), pacer.call_started()
            heapq.heappush(events, (clock.now + transit, next(sequence), "arrive", call, slot))
        at, _, kind, call, slot = heapq.heappop(events)
        if decreased_at is not None:
            busy += active * (at - last)
        clock.now = last = at
        if kind == "arrive" and active >= capacity(at):
            heapq.heappush(events, (at + transit, next(sequence), "refused", call, slot))
        elif kind == "arrive":
            active += 1
            run.levels.append((at, active))
            heapq.heappush(events, (at + latency(active), next(sequence), "done", call, slot))
        elif kind == "done":
            active -= 1
            run.levels.append((at, active))
            heapq.heappush(events, (at + transit, next(sequence), "answered", call, slot))
        elif kind == "answered":
            pacer.call_ended(call)
            pacer.succeeded(at - call.started, call)
            slot.release()
            if decreased_at is not None:
                succeeded_after = succeeded_after or at
            ready += sum(1 for refused in waiting if refused < call.started)
            waiting = [refused for refused in waiting if refused >= call.started]
        else:
            pacer.call_ended(call)
            pacer.failed("rate_limit_error", "over capacity", call)
            slot.release()
            waiting.append(at)
            run.limits.append(pacer.limit)
            decreased_at = decreased_at or at
            if succeeded_after is None:
                run.overshoot += 1
            else:
                run.probes += 1
    run.limit = pacer.limit
    if decreased_at is not None:
        run.used = busy / (capacity(last) * (last - decreased_at))
    return run


def _remote(clock: Clock, max_concurrency: int = 256) -> Pacer:
    return _pacer(clock, kind="anthropic", base_url="http://u", max_concurrency=max_concurrency)


@pytest.mark.parametrize("capacity", [3, 16, 40, 100])
def test_against_a_concurrency_cap_the_limit_settles_at_the_cap(capacity: int) -> None:
    clock = Clock()
    run = _simulate(_remote(clock), clock, lambda _: capacity, 200 * capacity)
    assert run.limits, "the upstream never refused a call"
    # the slow start's one overshoot: at most the gain's share past the cap (or its start)
    assert run.overshoot <= max(SLOW_START_FROM - capacity, (SLOW_START_GAIN - 1) * capacity)
    assert run.limits[run.overshoot - 1] == capacity  # the burst found the cap, and each
    assert set(run.limits[run.overshoot :]) == {capacity}  # refusal after it is one probe
    assert run.limit in (capacity, capacity + 1)
    assert run.used >= 0.98


def test_probes_past_a_cap_found_again_and_again_grow_rarer() -> None:
    clock = Clock()
    run = _simulate(_remote(clock), clock, lambda _: 16, 40_000)  # 2,500 windows of 16
    # probes after 16, 32, 64 and then every 128 windows, one refused call each
    assert run.probes <= 3 + 2_500 // PROBE_WINDOWS_MAX
    assert run.probes + run.overshoot <= 0.001 * 40_000


@pytest.mark.parametrize("knee", [8, 16, 64])
def test_against_a_queueing_upstream_the_limit_settles_near_its_knee(knee: int) -> None:
    clock = Clock()
    run = _simulate(
        _remote(clock), clock, lambda _: 10**6, 200 * knee,
        latency=lambda calls: 0.1 * max(1, calls / knee),  # slower past the knee, no 429
    )  # fmt: skip
    assert not run.limits  # never a refusal
    assert knee <= run.mean_level(since=0.25) <= 1.5 * knee  # full speed, hardly a queue
    assert knee <= run.limit <= 1.5 * knee


def test_one_slow_window_cuts_the_limit_by_a_quarter_at_most() -> None:
    clock = Clock()
    pacer = _pacer(clock, max_concurrency=64, initial_concurrency=16)
    for _ in range(16):
        pacer.succeeded(latency=0.1, call=_call(pacer, level=16))
    for _ in range(17):  # more calls in flight, and a busy CPU here slows them five times
        pacer.succeeded(latency=0.5, call=_call(pacer, level=18))
    assert pacer.limit == int(17 * LATENCY_MAX_CUT)


def test_the_limit_follows_a_cap_that_moves() -> None:
    clock = Clock()
    start = clock.now
    run = _simulate(_remote(clock), clock, lambda at: 24 if at - start < 10 else 12, 4_000)
    assert run.limit in (12, 13)  # down at once when the cap fell
    clock = Clock()
    start = clock.now
    run = _simulate(_remote(clock), clock, lambda at: 12 if at - start < 10 else 24, 4_000)
    assert run.limit >= 24  # and up again once it rose: by one per window past a probe


def test_latency_that_climbs_with_the_calls_in_flight_cuts_the_limit() -> None:
    pacer = _pacer(max_concurrency=64, initial_concurrency=8)
    for _ in range(8):
        pacer.succeeded(latency=0.1, call=_call(pacer, level=8))  # the baseline
    for _ in range(8):  # more calls later, each twice as slow: they queue upstream
        pacer.succeeded(latency=0.2, call=_call(pacer, level=9))
    assert pacer.source == LimitSource.LATENCY
    assert pacer.limit == int(9 * LATENCY_MAX_CUT)  # by a quarter at most per window
    for _ in range(9):  # another such window: on toward 1.2 times the latency
        pacer.succeeded(latency=0.2, call=_call(pacer, level=9))
    assert pacer.limit == int(9 * LATENCY_TARGET / 2)


def test_slower_answers_at_the_same_concurrency_move_nothing() -> None:
    pacer = _pacer(max_concurrency=64, initial_concurrency=8)
    for latency in (0.1, 0.3):  # e.g. a busy CPU here, not a queue upstream
        for _ in range(8):
            pacer.succeeded(latency=latency, call=_call(pacer, level=8))
    assert (pacer.limit, pacer.source) == (10, LimitSource.GROWTH)  # both windows grew it


async def test_a_refused_call_retries_once_a_later_call_gets_through() -> None:
    clock = Clock()
    pacer = _pacer(clock)
    waiting = asyncio.create_task(pacer.wait_to_retry(60.0, "rate_limit_error"))
    await asyncio.sleep(0)
    pacer.succeeded(0.1, Call(seq=1, level=1, started=clock.now - 1))  # started before
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.now += 1
    pacer.succeeded(0.1, Call(seq=2, level=1, started=clock.now))  # started after the 429
    await asyncio.wait_for(waiting, timeout=5)


async def test_synchronous_calls_take_at_most_their_share_while_batch_work_waits() -> None:
    pacer = _pacer(max_concurrency=4, adaptive_concurrency=False, interactive_share=0.5)
    pacer.batch_backlog = True
    calls = [asyncio.create_task(pacer.acquire(lane=Lane.INTERACTIVE)) for _ in range(4)]
    await asyncio.sleep(0)
    assert sum(c.done() for c in calls) == 2  # half of the limit
    assert pacer.free_for_batch() == 2  # the other half is the batch's
    pacer.batch_backlog = False  # no batch work left: the calls take the rest
    await asyncio.sleep(0)
    assert all(c.done() for c in calls)


async def test_flex_calls_go_after_interactive_and_before_batch_retries() -> None:
    pacer = _pacer(max_concurrency=1, adaptive_concurrency=False)
    busy = pacer.take()
    order: list[str] = []

    async def wait(lane: Lane) -> None:
        slot = await pacer.acquire(lane=lane)
        order.append(lane.value)
        slot.release()

    tasks = [asyncio.create_task(wait(lane)) for lane in (Lane.BATCH, Lane.FLEX, Lane.INTERACTIVE)]
    await asyncio.sleep(0)
    busy.release()
    await asyncio.gather(*tasks)
    assert order == ["interactive", "flex", "batch"]


def test_published_budgets_follow_the_headers() -> None:
    pacer = _pacer()
    call = pacer.call_started()
    pacer.observe_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "42",
            "x-ratelimit-reset-requests": "1m0s",
        },
        call,
    )
    pacer.call_ended(call)
    budget = pacer.status().budgets["requests"]
    assert (budget["limit"], budget["remaining"], budget["per_minute"]) == (600, 42, 600)
