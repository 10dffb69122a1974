"""Admission control for one backend: how many calls may be in flight, and how fast.

``Pacer`` holds an adaptive concurrency limit (additive increase, multiplicative decrease):
each success grows the limit by one per window of successes, each 429/529/timeout halves it
(at most once per round trip), always within ``[min_concurrency, max_concurrency]``. So a
batch settles at what the upstream really admits, without being told.

A call holds a ``Slot`` while it talks to the upstream. Slots freed go first to waiting
interactive calls, then to batch requests waiting to retry, and only then to new batch work
(the engine asks ``free_for_batch`` before it claims). Optional token buckets keep requests
and tokens per minute under a budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from batchd.config import BackendConfig
from batchd.metrics import Metrics

CONGESTION = frozenset({"rate_limit_error", "overloaded_error", "timeout_error"})
_MIN_COOLDOWN = 0.05  # seconds between two decreases, before any latency is known
_BUCKET_SECONDS = 10.0  # a budget bucket holds this many seconds' worth of its rate


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
    held: bool = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.pacer._released()

    async def reacquire(self, *, interactive: bool) -> None:
        if not self.held:
            await self.pacer._wait_for_slot(interactive=interactive)
            self.held = True


@dataclass
class BackendStatus:
    """What an operator sees of one backend."""

    limit: int
    in_flight: int
    waiting: int
    retries: int = 0
    last_error: dict[str, object] | None = None


class Pacer:
    def __init__(
        self,
        config: BackendConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = config.name
        self.adaptive = config.adaptive_concurrency
        self.min_limit = config.min_concurrency
        self.max_limit = config.max_concurrency
        self._limit = float(config.initial_concurrency or config.max_concurrency)
        self.in_flight = 0
        self._interactive: deque[asyncio.Future[None]] = deque()
        self._retrying: deque[asyncio.Future[None]] = deque()
        self._listeners: list[Callable[[], None]] = []
        self._clock = clock
        self._last_decrease = -math.inf
        self._latency: float | None = None  # smoothed latency of successful calls
        self._successes = 0  # since the limit last moved
        self.retries = 0
        self.last_error: dict[str, object] | None = None
        self._in_flight_gauge = metrics.in_flight.labels(self.name)
        self._limit_gauge = metrics.concurrency_limit.labels(self.name)
        self.requests = self._bucket(config.requests_per_minute)
        self.tokens = self._bucket(config.tokens_per_minute)
        self._publish()

    def _bucket(self, per_minute: float | None) -> TokenBucket | None:
        if per_minute is None:
            return None
        rate = per_minute / 60
        return TokenBucket(rate, max(1.0, rate * _BUCKET_SECONDS), self._clock)

    # -- slots -----------------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def waiting(self) -> int:
        return len(self._interactive) + len(self._retrying)

    def on_free(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever batch work may be admitted again."""
        self._listeners.append(listener)

    def free_for_batch(self) -> int:
        return max(0, self.limit - self.in_flight - self.waiting)

    def take(self) -> Slot:
        """A slot for new batch work, counted at once (the engine checked free_for_batch)."""
        self.in_flight += 1
        self._publish()
        return Slot(self)

    async def acquire(self, *, interactive: bool) -> Slot:
        await self._wait_for_slot(interactive=interactive)
        return Slot(self)

    async def _wait_for_slot(self, *, interactive: bool) -> None:
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            self._publish()
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._interactive if interactive else self._retrying
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._released()  # granted just as we were cancelled: give it back
            else:
                queue.remove(granted)
            raise

    def _released(self) -> None:
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        """Hand free slots to waiters, interactive first; then tell the batch side."""
        for queue in (self._interactive, self._retrying):
            while queue and self.in_flight < self.limit:
                waiter = queue.popleft()
                if not waiter.done():
                    self.in_flight += 1
                    waiter.set_result(None)
        self._publish()
        if self.free_for_batch() > 0:
            for listener in self._listeners:
                listener()

    # -- adapting ----------------------------------------------------------------------------

    def succeeded(self, latency: float) -> None:
        self._latency = latency if self._latency is None else 0.8 * self._latency + 0.2 * latency
        if not self.adaptive or self._limit >= self.max_limit:
            return
        self._successes += 1
        if self._successes >= self.limit:  # a whole window went through: one more
            self._successes = 0
            self._limit += 1
            self._grant()

    def failed(self, error_type: str, message: str) -> None:
        self.last_error = {"type": error_type, "message": message, "at": time.time()}
        if not (self.adaptive and error_type in CONGESTION):
            return
        now = self._clock()
        cooldown = max(self._latency or 0.0, _MIN_COOLDOWN)
        if now - self._last_decrease >= cooldown:
            self._last_decrease = now
            self._limit = max(float(self.min_limit), self._limit / 2)
            self._successes = 0
            self._publish()

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.limit, self.in_flight, self.waiting, self.retries, self.last_error
        )

    def _publish(self) -> None:
        self._in_flight_gauge.set(self.in_flight)
        self._limit_gauge.set(self.limit)
