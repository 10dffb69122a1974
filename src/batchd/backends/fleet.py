"""One budget for a fleet: a backend's requests and tokens per minute, and its concurrency
cap, shared by every worker.

On PostgreSQL, each configured ``requests_per_minute`` / ``tokens_per_minute`` of a backend is
one token bucket in the database (``fleet_budgets``), so N workers together stay within it
instead of each spending the whole budget. A worker draws a quarter second's worth (at least
what one call needs) in one short transaction and spends it locally, so the database sees
a few draws a second per worker, not one per call; while the bucket is empty it looks again
when the refill it needs is due. Budgets an upstream publishes in its headers need no such
sharing: every worker reads the same remaining figure from its own answers.

``fleet_max_concurrency`` caps a backend's calls in flight from every process together. Each
process holds a number of slots of it, a row of ``fleet_slots`` leased to it, and paces
within them (``Pacer.set_fleet_cap``); a ``FleetSlots`` task per backend looks at its row in
one short transaction (``Store.share_slots``): every ``LOOK_SECONDS`` while it holds or
wants slots, and at once when a call has to wait for one while it holds none. Each look
frees the slots of lapsed leases (a process killed), renews its own lease, asks for what
its pacer would use (its own limit while calls wait, else its calls in flight), and takes
its fair share of what the others leave free; above its share it keeps what is in flight
and gives the rest back as those calls end. So no upstream call waits for the database, and
the calls in flight never exceed the slots held. While the database cannot be reached the
process paces alone within its own limit (logged), and shares again once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from batchd.backends.pacing import FleetShare, Pacer, TokenBucket
from batchd.domain import SlotShare
from batchd.errors import StoreUnavailable
from batchd.metrics import Metrics

log = logging.getLogger(__name__)

DRAW_SECONDS = 0.25  # a draw takes this many seconds' worth of the rate
_MAX_WAIT = 1.0  # seconds between two looks at an empty bucket, at most

LOOK_SECONDS = 0.2  # between two looks at the fleet slots, while holding or wanting some
_RETRY_MAX = 2.0  # seconds between two tries while the database cannot be reached, at most

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


class SlotStore(Protocol):
    """What the fleet slots need of the store (``batchd.store.Store``)."""

    async def share_slots(
        self,
        backend: str,
        holder: str,
        total: int,
        *,
        keep: int,
        wanted: int,
        now: float,
        until: float,
    ) -> SlotShare: ...

    async def drop_slots(self, backend: str, holder: str) -> None: ...


def holder_id() -> str:
    """This process, as the ``fleet_slots`` rows name it: host, process id, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class FleetSlots:
    """Keeps one pacer within this process's share of its backend's fleet cap."""

    def __init__(
        self,
        pacer: Pacer,
        total: int,
        store: SlotStore,
        metrics: Metrics,
        *,
        holder: str,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pacer = pacer
        self.total = total
        self.holder = holder
        self._store = store
        self._lease = lease_seconds
        self._clock = clock
        self._usable = 0  # the slots the pacer may fill
        self._asked = asyncio.Event()  # a call waits for a slot
        self._gauge = metrics.fleet_slots.labels(pacer.name)
        self.share = FleetShare(total)
        pacer.share_fleet(self.share, self._asked.set)

    async def run(self) -> None:
        """Look at the slots until cancelled: soon again while holding or wanting any, else
        when a call asks; after a failed look, again after a doubling delay."""
        failures = 0
        while True:
            self._asked.clear()
            try:
                busy = await self.look()
            except StoreUnavailable as exc:
                failures += 1
                self._alone(exc, failures)
                await asyncio.sleep(min(LOOK_SECONDS * 2**failures, _RETRY_MAX))
                continue
            if failures:
                log.warning("backend %s: fleet slots shared again", self.pacer.name)
                failures = 0
            if busy:
                await asyncio.sleep(LOOK_SECONDS)
            else:
                await self._asked.wait()

    async def look(self) -> bool:
        """One look (``Store.share_slots``); whether this process holds or wants slots."""
        wanted, in_flight = self.pacer.fleet_demand()
        wanted = min(wanted, self.total)
        # What it keeps: its calls in flight, and what it may fill of what it would use.
        keep = max(in_flight, min(self._usable, wanted))
        if keep < self._usable or not self.share.shared:
            self.pacer.set_fleet_cap(keep)  # until the look is done: no more than kept
        now = self._clock()
        share = await self._store.share_slots(
            self.pacer.name,
            self.holder,
            self.total,
            keep=keep,
            wanted=wanted,
            now=now,
            until=now + self._lease,
        )
        self._usable = share.usable
        self.share.slots, self.share.in_use, self.share.shared = share.slots, share.in_use, True
        self._gauge.set(share.slots)
        self.pacer.set_fleet_cap(share.usable)
        return share.slots > 0 or wanted > 0

    def _alone(self, exc: StoreUnavailable, failures: int) -> None:
        """The database cannot be reached: pace alone (the process's own limit) until it can."""
        if failures == 1:
            log.warning(
                "backend %s: the store is unavailable (%s); pacing alone within the local "
                "limit until the fleet slots can be shared again",
                self.pacer.name,
                exc,
            )
        self.share.shared = False
        self.pacer.set_fleet_cap(None)

    async def close(self) -> None:
        """Give every slot back (a graceful stop); a lapsed lease frees them otherwise."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.drop_slots(self.pacer.name, self.holder)


@contextlib.asynccontextmanager
async def fleet_slots(
    pacers: Iterable[tuple[Pacer, int | None]],
    store: SlotStore,
    metrics: Metrics,
    lease_seconds: float,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[list[FleetSlots]]:
    """A ``FleetSlots`` running for each pacer with a fleet cap (``fleet_max_concurrency``),
    until the block ends; then each gives its slots back."""
    holder = holder_id()
    keepers = [
        FleetSlots(
            pacer, total, store, metrics, holder=holder, lease_seconds=lease_seconds, clock=clock
        )
        for pacer, total in pacers
        if total is not None
    ]
    tasks = [asyncio.create_task(k.run(), name=f"fleet-slots-{k.pacer.name}") for k in keepers]
    for keeper, task in zip(keepers, tasks, strict=True):
        task.add_done_callback(functools.partial(_ended, keeper))
    try:
        yield keepers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for keeper in keepers:
            await keeper.close()


def _ended(keeper: FleetSlots, task: asyncio.Task[None]) -> None:
    """A keeper that died leaves its pacer to pace alone rather than stuck at its last cap."""
    if not task.cancelled() and task.exception() is not None:
        log.critical(
            "backend %s: fleet slots stopped; pacing alone",
            keeper.pacer.name,
            exc_info=task.exception(),
        )
        keeper.pacer.set_fleet_cap(None)
