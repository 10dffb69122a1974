"""One budget for a fleet: a backend's requests and tokens per minute shared by every worker.

On PostgreSQL, each configured ``requests_per_minute`` / ``tokens_per_minute`` of a backend is
one token bucket in the database (``fleet_budgets``), so N workers together stay within it
instead of each spending the whole budget. A worker draws a quarter second's worth (at least
what one call needs) in one short transaction and spends it locally, so the database sees
a few draws a second per worker, not one per call; while the bucket is empty it looks again
when the refill it needs is due. Budgets an upstream publishes in its headers need no such
sharing: every worker reads the same remaining figure from its own answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from batchd.backends.pacing import TokenBucket
from batchd.errors import StoreUnavailable

log = logging.getLogger(__name__)

DRAW_SECONDS = 0.25  # a draw takes this many seconds' worth of the rate
_MAX_WAIT = 1.0  # seconds between two looks at an empty bucket, at most

Draw = Callable[[str, float, float, float, float], Awaitable[float]]


class SharedBucket(TokenBucket):
    """A TokenBucket whose refill comes from the database: ``draw(name, rate, capacity,
    want, now)`` grants what the shared bucket holds, up to ``want``."""

    def __init__(self, name: str, rate: float, capacity: float, draw: Draw) -> None:
        super().__init__(rate, capacity, time.monotonic)
        self.name = name
        self._draw = draw
        self._level = 0.0  # nothing drawn yet
        self._chunk = max(1.0, rate * DRAW_SECONDS)
        self._turn = asyncio.Lock()  # takers in arrival order

    def _refill(self) -> None:
        """No local refill: the shared bucket refills, in the database."""

    async def take(self, amount: float) -> float:
        charge = max(0.0, min(amount, self.capacity))
        async with self._turn:
            while self._level < charge:
                want = min(self.capacity, max(self._chunk, charge - self._level))
                try:
                    self._level += await self._draw(
                        self.name, self.rate, self.capacity, want, time.time()
                    )
                except StoreUnavailable as exc:
                    log.warning("budget %s: the store is unavailable (%s); waiting", self.name, exc)
                if self._level < charge:
                    await asyncio.sleep(min(_MAX_WAIT, (charge - self._level) / self.rate))
            self._level -= charge
        return charge


def shared_buckets(draw: Draw) -> Callable[[str, float, float], TokenBucket]:
    """The bucket factory a Pacer uses for its configured budgets on a shared database."""
    return lambda name, rate, capacity: SharedBucket(name, rate, capacity, draw)
