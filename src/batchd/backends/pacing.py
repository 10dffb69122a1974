"""Admission control for one backend: how many calls may be in flight, and how fast.

``Pacer`` holds an adaptive concurrency limit within ``[min_concurrency, max_concurrency]``,
moved by what the upstream shows (``limit_source`` says which signal moved it last):

* **slow start** (remote upstreams without an ``initial_concurrency``): the limit starts at
  ``SLOW_START_FROM`` and grows by one per success, but to at most ``SLOW_START_GAIN`` times
  the most calls seen in flight at the start of a call that succeeded (so by half per round
  trip while the calls fill it), until the first sign of congestion; so the first refusal
  finds at most half of the upstream's capacity too many calls in flight, never double;
* **congestion** (429, 529, timeouts): the limit falls to the calls still in flight, the
  refused one excluded: a refusal comes back at once and an admitted call later, so once a
  burst of refusals is back this is the concurrency the upstream admitted (a figure that only
  cuts what is not in use now); with no call to go by it halves (AIMD's decrease);
* **growth**: one more per window of successes (a window is ``limit`` successes); at or
  above the concurrency an upstream last refused (the *ceiling*) one per ``PROBE_WINDOWS``
  windows, twice as rarely after each probe refused at the same ceiling (up to
  ``PROBE_WINDOWS_MAX``), so a known capacity costs one refused call now and then; a window
  that got through with calls past the ceiling among it forgets the ceiling (the upstream
  admits more now): one more per window again;
* **latency** (upstreams that queue instead of refusing, as vLLM does): per window, the
  median latency against the lowest seen (a Vegas / gradient rule), at ``LATENCY_LEVEL``
  times the calls in flight of that lowest window or more: above ``LATENCY_HOLD`` times it
  the limit stops growing, above ``LATENCY_CUT`` it is cut toward where the latency would be
  ``LATENCY_TARGET`` times it, by a quarter at most per window (one window slowed by a busy
  CPU here cannot throw the capacity away). The lowest latency is forgotten slowly, only
  from windows at fewer calls (where a slower answer is the upstream's, not a queue).

Budgets: token buckets for the configured ``requests_per_minute`` / ``tokens_per_minute``,
and one per budget the upstream publishes in its answers' headers (``ratelimits.py``), kept
in step with the remaining figure of each answer.

A call holds a ``Slot`` while it talks to the upstream. Slots freed go first to waiting
synchronous calls, interactive then flex (``Lane``), while they hold less than
``interactive_share`` of the limit or no batch work waits; then to batch requests waiting to
retry, and only then to new batch work. The engine claims new batch work while
``room_for_batch``: the free slots and ``limit // PREFETCH_SHARE`` more, whose requests wait
in the batch queue (``take`` hands them a slot not yet held), so that a slot freed goes to
the next request at once instead of idling while the engine claims one (measured against an
upstream of 16 calls of 200 ms: 0.77-0.89 of its capacity used without, 0.99 with). While
synchronous calls come, batch work leaves one slot of the limit free for them, so that one
need not wait for a batch call to end (with the batch's calls in step, that wait was up to
a whole call). The first interactive call to come finds no slot kept: when batch work holds
every slot of the limit, it takes one slot more (``interactive_extra_slot``, one past the
limit at most, and only while no synchronous call holds a slot), unless a call was refused
for congestion since the upstream last admitted more (the limit may be the upstream's then:
it waits for the next slot freed) or a ``fleet_max_concurrency`` is set. The limit holds
for batch work: it takes no slot until the calls in flight are under it again.

With ``fleet_max_concurrency``, the limit is at most that; on PostgreSQL it is also at most
the slots of it that this process holds (``fleet_cap``, kept by ``backends/fleet.py``), which
learns from ``fleet_demand`` what the process would use and hears through ``on_demand`` when
a call has to wait for a slot.

A request refused for congestion waits its delay (the upstream's ``retry-after``, else the
backoff), but no longer than until a call of the same backend that started after the refusal
succeeds: then the upstream admits calls again (a ``retry-after`` on a concurrency limit, as
LiteLLM sends, is no clock), and the request retries through the retry queue, under the
lowered limit. So one refused call never idles a backend whose other calls get through.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from batchd.backends.ratelimits import BudgetName, read_limits
from batchd.config import BackendConfig
from batchd.metrics import Metrics

CONGESTION = frozenset({"rate_limit_error", "overloaded_error", "timeout_error"})
REMOTE_KINDS = frozenset({"anthropic", "openai"})
_MIN_COOLDOWN = 0.05  # seconds between two decreases, before any latency is known
_BUCKET_SECONDS = 10.0  # a budget bucket holds this many seconds' worth of its rate
_PUBLISHED_WINDOW = 60.0  # seconds: Anthropic's and OpenAI's published budgets are per minute
SLOW_START_FROM = 8
SLOW_START_GAIN = 1.5  # slow start: the limit at most this times the most calls admitted
PROBE_WINDOWS = 16  # windows between probes past a ceiling, at first ...
PROBE_WINDOWS_MAX = 128  # ... and at most, doubling per probe refused at the same ceiling
PREFETCH_SHARE = 8  # batch requests claimed ahead of free slots: this share of the limit
SYNC_RESERVE_ROUND_TRIPS = 4  # a slot kept for synchronous calls this long after the last
LATENCY_HOLD = 1.2
LATENCY_CUT = 1.5
LATENCY_TARGET = 1.25
LATENCY_MAX_CUT = 0.75  # a latency cut keeps at least this share of the limit per window
LATENCY_LEVEL = 1.1  # ... at this many times the calls in flight of the lowest latency
_BASELINE_DRIFT = 1.002  # per window: the lowest latency is slowly forgotten
_NO_CAP = 1 << 62  # the fleet cap of a pacer that shares none (or cannot reach the database)


class Lane(StrEnum):
    """Who a call is for, in the order free slots are handed out."""

    INTERACTIVE = "interactive"  # POST /v1/messages: a caller waits
    FLEX = "flex"  # a synchronous call that may wait for capacity (batchd-service-tier: flex)
    BATCH = "batch"


class LimitSource(StrEnum):
    """The signal that set a backend's current concurrency limit."""

    CONFIGURED = "configured"  # fixed (adaptive_concurrency = false) or where it started
    SLOW_START = "slow_start"
    GROWTH = "growth"
    CONGESTION = "congestion"  # a 429, 529 or timeout
    LATENCY = "latency"


class TokenBucket:
    """``rate`` units per second, bursting to ``capacity``; takers wait in order.

    A take charges at most ``capacity`` (one huge estimate cannot push the level so far
    below zero that everyone after it waits for hours), and the level never falls below
    ``-capacity`` whatever is charged later. Waiters hold no lock while they wait: each
    sleeps until the refill it needs is due or until the level changes (a refund through
    ``adjust``), whichever comes first, and then looks again.
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._stamp = clock()
        self._changed = asyncio.Event()  # set, and replaced, whenever the level may be enough
        self._queue: deque[object] = deque()  # takers in arrival order; the head may charge

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def take(self, amount: float) -> float:
        """Wait until ``amount`` (at most a full bucket) is available; return what was charged."""
        charge = max(0.0, min(amount, self.capacity))
        turn = object()
        self._queue.append(turn)
        try:
            while self._queue[0] is not turn or self.level < charge:
                # The head sleeps until its refill is due; the others until the head is served.
                due = (charge - self._level) / self.rate if self._queue[0] is turn else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), due)
            self._level -= charge
        finally:
            self._queue.remove(turn)
            self._notify()
        return charge

    def sync(self, level: float) -> None:
        """Set the level to what the upstream says is left (its published budget)."""
        self._refill()
        rose = level > self._level
        self._level = max(-self.capacity, min(self.capacity, level))
        if rose:
            self._notify()

    def adjust(self, amount: float) -> None:
        """Charge ``amount`` more (or refund, when negative) once the true cost is known;
        a waiter looks at the new level at once."""
        self._refill()
        self._level = max(-self.capacity, min(self.capacity, self._level - amount))
        if amount < 0:
            self._notify()


@dataclass(eq=False)
class Slot:
    """The right to have one call in flight; release is idempotent."""

    pacer: Pacer
    lane: Lane = Lane.BATCH
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.pacer._released(self.lane)

    async def reacquire(self) -> None:
        if not self.held:
            await self.pacer._wait_for_slot(self.lane)
            self.held = True


@dataclass(frozen=True, slots=True)
class Call:
    """One upstream call as it started: the pacer reads its level and order afterwards."""

    seq: int  # calls this pacer started before it, plus one
    level: int  # calls in flight as it started, itself included
    started: float


@dataclass
class FleetShare:
    """This process's share of a backend's ``fleet_max_concurrency`` (backends/fleet.py)."""

    max_concurrency: int
    slots: int = 0  # held by this process in the database
    in_use: int = 0  # held by every process together, at this process's last look
    shared: bool = True  # False while the database cannot be reached: paced alone


@dataclass
class BackendStatus:
    """What an operator sees of one backend."""

    limit: int
    in_flight: int
    waiting: int
    retries: int = 0
    last_error: dict[str, object] | None = None
    limit_source: str = LimitSource.CONFIGURED.value
    # Budgets the upstream publishes: limit, what batchd counts as left, per minute.
    budgets: dict[str, dict[str, float]] = field(default_factory=dict)
    fleet: FleetShare | None = None  # on PostgreSQL with fleet_max_concurrency


class Pacer:
    def __init__(
        self,
        config: BackendConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        buckets: Callable[[str, float, float], TokenBucket] | None = None,
    ) -> None:
        """``buckets(name, rate, capacity)`` makes the configured budgets' buckets (shared
        by a fleet: backends/fleet.py); by default each is this process's own."""
        self.name = config.name
        self._make_bucket = buckets
        self.adaptive = config.adaptive_concurrency
        self.min_limit = config.min_concurrency
        self.max_limit = min(config.max_concurrency, config.fleet_max_concurrency or _NO_CAP)
        self.interactive_share = config.interactive_share
        # a fleet's cap is a ceiling for every call: none goes past it
        self.extra_slot = config.interactive_extra_slot and config.fleet_max_concurrency is None
        self._slow_start = (
            self.adaptive and config.initial_concurrency is None and config.kind in REMOTE_KINDS
        )
        start = min(config.initial_concurrency or config.max_concurrency, self.max_limit)
        if self._slow_start:
            start = max(self.min_limit, min(self.max_limit, SLOW_START_FROM))
        self._limit = float(start)
        self._cap = _NO_CAP  # the fleet slots this process may fill (backends/fleet.py)
        self._min_prefetch = 0  # 1 where a fleet cap is shared: a claim asks for slots
        self.fleet: FleetShare | None = None
        self.on_demand: Callable[[], None] = lambda: None  # a call waits for a slot
        self.source = LimitSource.SLOW_START if self._slow_start else LimitSource.CONFIGURED
        self._shown_source: LimitSource | None = None
        self.in_flight = 0
        self._sync_in_flight = 0  # slots held by interactive and flex calls
        self._last_sync = -math.inf  # when a synchronous call last asked for a slot
        self._queues: dict[Lane, deque[asyncio.Future[None]]] = {lane: deque() for lane in Lane}
        self._listeners: list[Callable[[], None]] = []
        self._clock = clock
        self._last_decrease = -math.inf
        self._episode_limit = self._limit  # the limit before the current congestion episode
        self._ceiling = 0  # the most calls the upstream was last found to admit
        self._refused = False  # a call refused for congestion since the upstream admitted more
        self._probe_every = PROBE_WINDOWS  # windows between two probes above the ceiling
        self._confirmed = 0  # the most calls in flight at the start of a call that succeeded
        self._decreased_seq = 0  # the calls started before the limit last fell
        self._past_ceiling = False  # a call started since then above the ceiling got through
        self._latency: float | None = None  # smoothed latency of successful calls
        self._successes = 0  # since the limit last moved
        self._window: list[tuple[float, int]] = []  # (latency, level) of its successes
        self._window_size = max(1, self.limit)  # successes that close the current window
        self._baseline: float | None = None  # the lowest window median latency, slowly forgotten
        self._baseline_level = 0.0  # the mean calls in flight in that window
        self._calls = 0
        self._open: set[int] = set()  # calls started and not yet answered
        self._retry_waiters: list[tuple[float, asyncio.Future[None]]] = []
        self._backlog = False
        self.retries = 0
        self.last_error: dict[str, object] | None = None
        self._in_flight_gauge = metrics.in_flight.labels(self.name)
        self._limit_gauge = metrics.concurrency_limit.labels(self.name)
        self._source_gauges = {
            s: metrics.limit_source.labels(self.name, s.value) for s in LimitSource
        }
        self._metrics = metrics
        self.requests = self._bucket("requests", config.requests_per_minute)
        self.tokens = self._bucket("tokens", config.tokens_per_minute)
        self.published: dict[BudgetName, TokenBucket] = {}
        self._synced: dict[BudgetName, int] = {}  # the newest call whose answer set each budget
        self._publish()

    def _bucket(self, budget: str, per_minute: float | None) -> TokenBucket | None:
        if per_minute is None:
            return None
        rate = per_minute / 60
        capacity = max(1.0, rate * _BUCKET_SECONDS)
        if self._make_bucket is not None:
            return self._make_bucket(f"{self.name}/{budget}", rate, capacity)
        return TokenBucket(rate, capacity, self._clock)

    # -- slots -----------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return min(int(self._limit), self._cap)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def batch_backlog(self) -> bool:
        """True while the engine has batch work for this backend that waits for slots."""
        return self._backlog

    @batch_backlog.setter
    def batch_backlog(self, value: bool) -> None:
        if value != self._backlog:
            self._backlog = value
            if not value:
                self._grant()  # synchronous calls held back for the batch may go now

    def on_free(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever batch work may be admitted again."""
        self._listeners.append(listener)

    def _sync_room(self) -> int:
        """How many more synchronous calls may take slots ahead of batch work."""
        if not self._backlog:
            return self.limit
        share = max(1, int(self.interactive_share * self.limit))
        return max(0, share - self._sync_in_flight)

    def _ahead(self, lane: Lane) -> int:
        """Waiters that a free slot would go to before a call of ``lane``."""
        sync = len(self._queues[Lane.INTERACTIVE])
        if lane is not Lane.INTERACTIVE:
            sync += len(self._queues[Lane.FLEX])
        if lane is not Lane.BATCH:
            return sync
        return min(sync, self._sync_room()) + len(self._queues[Lane.BATCH])

    def free_for_batch(self) -> int:
        return max(0, self._batch_limit() - self.in_flight - self._ahead(Lane.BATCH))

    def _batch_limit(self) -> int:
        """The slots batch work may hold: the limit, less one kept free while synchronous
        calls come (one arrived within the last ``SYNC_RESERVE_ROUND_TRIPS`` round trips), so
        that the next one need not wait for a batch call to end."""
        recent = self._clock() - self._last_sync < SYNC_RESERVE_ROUND_TRIPS * (self._latency or 0)
        return self.limit - 1 if recent and self.limit > 1 else self.limit

    @property
    def prefetch(self) -> int:
        """Batch requests claimed ahead of a free slot, waiting in the batch queue, so that a
        slot freed goes to the next request at once instead of waiting for a claim."""
        return max(self._min_prefetch, self.limit // PREFETCH_SHARE)

    def room_for_batch(self) -> int:
        """New batch requests the engine may claim now: the free slots, and up to
        ``prefetch`` more that wait for the next ones freed."""
        return max(0, self.free_for_batch() + self.prefetch - len(self._queues[Lane.BATCH]))

    def take(self) -> Slot:
        """A slot for new batch work (the engine checked room_for_batch): counted at once
        where one is free; else a slot to ``reacquire``, in the batch queue."""
        if self.free_for_batch() <= 0:
            return Slot(self, held=False)
        self.in_flight += 1
        self._publish()
        return Slot(self)

    async def acquire(self, *, interactive: bool = False, lane: Lane | None = None) -> Slot:
        """A slot for a call of ``lane`` (default: interactive, or a batch retry)."""
        lane = lane or (Lane.INTERACTIVE if interactive else Lane.BATCH)
        await self._wait_for_slot(lane)
        return Slot(self, lane)

    async def _wait_for_slot(self, lane: Lane) -> None:
        sync = lane is not Lane.BATCH
        if sync:
            self._last_sync = self._clock()
        if (
            self.in_flight < (self.limit if sync else self._batch_limit())
            and not self._ahead(lane)
            and (not sync or self._sync_room() > 0)
        ) or self._extra_slot_for(lane):
            self._count_in(lane)
            self._publish()
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues[lane]
        queue.append(granted)
        self.on_demand()
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._released(lane)  # granted just as we were cancelled: give it back
            else:
                queue.remove(granted)
            raise

    def _extra_slot_for(self, lane: Lane) -> bool:
        """Whether a call of ``lane`` may take a slot past the limit: an interactive call
        that finds batch work in every slot (none over the limit yet, no interactive call
        waiting), where the limit is not one the upstream refused calls past."""
        return (
            lane is Lane.INTERACTIVE
            and self.extra_slot
            and not self._refused
            and self._sync_in_flight == 0
            and self.in_flight == self.limit
            and not self._queues[Lane.INTERACTIVE]
        )

    def _count_in(self, lane: Lane) -> None:
        self.in_flight += 1
        if lane is not Lane.BATCH:
            self._sync_in_flight += 1

    def _released(self, lane: Lane = Lane.BATCH) -> None:
        self.in_flight -= 1
        if lane is not Lane.BATCH:
            self._sync_in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiters, synchronous calls first (within their share while
        batch work waits), then batch retries; then tell the batch side."""
        for lane in Lane:
            queue = self._queues[lane]
            limit = self._batch_limit() if lane is Lane.BATCH else self.limit
            while queue and self.in_flight < limit:
                if lane is not Lane.BATCH and self._sync_room() <= 0:
                    break
                waiter = queue.popleft()
                if not waiter.done():
                    self._count_in(lane)
                    waiter.set_result(None)
        self._publish()
        if self.room_for_batch() > 0:
            for listener in self._listeners:
                listener()

    # -- a fleet's concurrency cap ----------------------------------------------------------

    def share_fleet(self, share: FleetShare, on_demand: Callable[[], None]) -> None:
        """Take part in a fleet cap: the limit is the slots set by ``set_fleet_cap`` (none
        until the first), ``on_demand`` is told when a call has to wait for a slot, and a
        claim may take one request ahead of the slots held (that is how batch work asks)."""
        self.fleet = share
        self.on_demand = on_demand
        self._min_prefetch = 1
        self.set_fleet_cap(0)

    def set_fleet_cap(self, cap: int | None) -> None:
        """The fleet slots this process may fill; None: none shared (the local limit)."""
        rose = (cap if cap is not None else _NO_CAP) > self._cap
        self._cap = cap if cap is not None else _NO_CAP
        if rose:
            self._grant()
        else:
            self._publish()

    def fleet_demand(self) -> tuple[int, int]:
        """(the slots this process would use, its calls in flight): its own limit while
        calls wait for a slot, else only those in flight."""
        return (int(self._limit) if self.waiting else self.in_flight), self.in_flight

    # -- budgets -----------------------------------------------------------------------------

    def call_started(self) -> Call:
        """Note the start of an upstream call (its slot held, its budgets taken)."""
        self._calls += 1
        self._open.add(self._calls)
        return Call(self._calls, self.in_flight, self._clock())

    def call_ended(self, call: Call) -> None:
        self._open.discard(call.seq)

    async def admit(self, tokens: float) -> list[tuple[TokenBucket, float]]:
        """Wait for every request and token budget; the token charges, to settle later."""
        for bucket in (self.requests, self.published.get("requests")):
            if bucket is not None:
                await bucket.take(1)
        charged = []
        for bucket in (self.tokens, self.published.get("tokens")):
            if bucket is not None:
                charged.append((bucket, await bucket.take(tokens)))
        return charged

    def observe_headers(self, headers: Mapping[str, str], call: Call) -> None:
        """Keep the published budgets in step with what an answer says is left."""
        for name, budget in read_limits(headers, time.time()).items():
            bucket = self.published.get(name)
            if bucket is None or bucket.capacity != budget.limit:
                rate = budget.limit / _PUBLISHED_WINDOW
                bucket = TokenBucket(rate, budget.limit, self._clock)
                self.published[name] = bucket
            if call.seq <= self._synced.get(name, 0):
                continue  # an answer older than the one the bucket was set from
            self._synced[name] = call.seq
            if name == "requests":
                # Calls started since, and those started before still unanswered (this one
                # may have overtaken them), may not be counted upstream yet: count them spent.
                older = sum(1 for seq in self._open if seq < call.seq)
                bucket.sync(budget.remaining - (self._calls - call.seq) - older)
            else:
                bucket.sync(min(bucket.level, budget.remaining))
            self._metrics.budget_remaining.labels(self.name, name).set(budget.remaining)

    # -- adapting ----------------------------------------------------------------------------

    def succeeded(self, latency: float, call: Call | None = None) -> None:
        self._latency = latency if self._latency is None else 0.8 * self._latency + 0.2 * latency
        if call is not None:
            self._wake_retries(call.started)
        if not self.adaptive:
            return
        level = call.level if call is not None else self.in_flight
        self._window.append((latency, level))
        self._confirmed = max(self._confirmed, level)
        if call is not None and call.seq > self._decreased_seq and level > self._ceiling > 0:
            self._past_ceiling = True  # started above the ceiling since it was found
        # Slow start: one more per success, but at most SLOW_START_GAIN times the most calls
        # seen admitted together, so the first refusal finds at most that share too many.
        cap = min(self.max_limit, max(SLOW_START_FROM, SLOW_START_GAIN * self._confirmed))
        if self._slow_start and self._limit + 1 <= cap:
            self._limit += 1
            self._grant()
        if len(self._window) < self._window_size:
            return
        window, self._window = self._window, []
        self._window_size = max(1, self.limit)
        # the median: a few calls slowed by something else move it less than a queue does
        middle = statistics.median(latency for latency, _ in window)
        crowd = sum(level for _, level in window) / len(window)
        if self._latency_moved(middle, crowd) or self._slow_start:
            return
        self._successes += 1
        if self._past_ceiling:
            # a whole window without a refusal, calls past the ceiling among it: the upstream
            # admits more now; the limit grows by one per window again until the next refusal
            self._ceiling, self._probe_every, self._past_ceiling = 0, PROBE_WINDOWS, False
            self._refused = False
        needed = self._probe_every if self._limit >= self._ceiling > 0 else 1
        if self._successes >= needed and self._limit < self.max_limit:
            self._successes = 0
            self._limit += 1
            self.source = LimitSource.GROWTH
            self._grant()

    def _latency_moved(self, latency: float, level: float) -> bool:
        """Hold or cut the limit where a window's (median) latency rose over the baseline;
        the cut aims at the concurrency (the window's mean level) times the latency it had."""
        if self._baseline is None or latency < self._baseline:
            self._baseline, self._baseline_level = latency, level
            return False
        ratio = latency / self._baseline
        if level < self._baseline_level * LATENCY_LEVEL:
            # hardly more calls than then: whatever the latency, it is not a queue of ours;
            # the lowest latency is slowly forgotten (an upstream may get slower for good)
            self._baseline *= _BASELINE_DRIFT
            return False
        if ratio <= LATENCY_HOLD:
            return False
        self._slow_start = False
        if ratio > LATENCY_CUT:
            # by a quarter at most per window: one window slowed by something else (a busy
            # CPU here) does not throw away what the upstream admits
            target = max(1.0, level) * LATENCY_TARGET / ratio, self._limit * LATENCY_MAX_CUT
            self._limit = max(float(self.min_limit), min(self._limit, max(target)))
            self.source = LimitSource.LATENCY
            self._successes = 0
            self._publish()
        return True

    def failed(self, error_type: str, message: str, call: Call | None = None) -> None:
        self.last_error = {"type": error_type, "message": message, "at": time.time()}
        if error_type in CONGESTION:
            self._refused = True  # the limit may be the upstream's: no call goes past it
        if not (self.adaptive and error_type in CONGESTION):
            return
        now = self._clock()
        cooldown = max(self._latency or 0.0, _MIN_COOLDOWN)
        if now - self._last_decrease >= cooldown:  # a new episode: at most half of this limit
            self._last_decrease = now
            self._episode_limit = self._limit
        floor = self._episode_limit / 2  # at most half per round trip ...
        if call is None:  # nothing to go by: halve (AIMD's decrease)
            lowered = min(self._limit, floor)
        else:
            # The calls still in flight, this one excluded, were admitted: a refusal comes
            # back at once, an admitted call later, so once the refusals of a burst are all
            # back, the limit is what the upstream admitted. ... but one less per refusal
            # at least (a refused call's slot, given to another call, is refused again).
            lowered = min(self._limit - 1, max(float(self.in_flight - 1), floor))
        lowered = max(float(self.min_limit), lowered)
        if lowered < self._limit or self._slow_start:
            if self.limit >= self._ceiling > 0 and int(lowered) >= self._ceiling:
                # a probe refused at the ceiling found before: probe half as often
                self._probe_every = min(PROBE_WINDOWS_MAX, 2 * self._probe_every)
            self._limit = lowered
            self._ceiling = self.limit
            self._decreased_seq, self._past_ceiling = self._calls, False
            self._slow_start = False
            self._successes = 0
            self._window = []
            self._window_size = max(1, self.limit)
            self.source = LimitSource.CONGESTION
            self._publish()

    # -- retry waits -------------------------------------------------------------------------

    async def wait_to_retry(self, delay: float, error_type: str) -> None:
        """Sleep ``delay``; after congestion, only until a call started later succeeds."""
        if error_type not in CONGESTION:
            await asyncio.sleep(delay)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._clock(), woken)
        self._retry_waiters.append(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken, delay)
        finally:
            with contextlib.suppress(ValueError):
                self._retry_waiters.remove(entry)

    def _wake_retries(self, started: float) -> None:
        """A call that started at ``started`` got through: those refused before may retry."""
        if not self._retry_waiters:
            return
        still = []
        for refused_at, woken in self._retry_waiters:
            if refused_at < started:
                if not woken.done():
                    woken.set_result(None)
            else:
                still.append((refused_at, woken))
        self._retry_waiters = still

    def status(self) -> BackendStatus:
        budgets: dict[str, dict[str, float]] = {
            name: {
                "limit": bucket.capacity,
                "remaining": max(0.0, bucket.level),
                "per_minute": bucket.rate * _PUBLISHED_WINDOW,
            }
            for name, bucket in self.published.items()
        }
        return BackendStatus(
            self.limit,
            self.in_flight,
            self.waiting,
            self.retries,
            self.last_error,
            self.source.value,
            budgets,
            replace(self.fleet) if self.fleet is not None else None,
        )

    def _publish(self) -> None:
        self._in_flight_gauge.set(self.in_flight)
        self._limit_gauge.set(self.limit)
        if self._shown_source is not self.source:
            self._shown_source = self.source
            for source, gauge in self._source_gauges.items():
                gauge.set(1 if source is self.source else 0)
