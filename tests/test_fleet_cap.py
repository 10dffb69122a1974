"""One concurrency cap for a fleet (``fleet_max_concurrency``, backends/fleet.py): the split of
the slots, the store's look on both dialects, a pacer kept within its share, and three
`batchd worker` processes on one PostgreSQL that never have more calls in flight together
than the cap, even when one of them is killed holding slots."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anthropic
import asyncpg
import httpx2 as httpx
import msgspec
import pytest
from anthropic.types.messages.batch_create_params import Request

from batchd.backends.fleet import FleetSlots
from batchd.backends.pacing import Pacer, Slot
from batchd.config import BackendConfig
from batchd.domain import SlotShare, fleet_share
from batchd.metrics import Metrics
from batchd.schemas.status import BackendStateList, FleetState
from batchd.store import Store, Timeouts, open_store
from tests.conftest import wait_ended, wait_until
from tests.support.cluster import Cluster, backend_table, run_batchd
from tests.support.postgres import PostgresServer, ephemeral_postgres
from tests.support.upstream import FakeUpstream, serve_upstream
from tests.test_prometheus import scrape

T0 = 1_800_000_000.0
CAP = 4


@pytest.mark.parametrize(
    ("total", "wanted", "keep", "others", "expected"),
    [
        # alone: all it wants, up to the cap
        (8, 5, 0, {}, SlotShare(5, 5, 5)),
        (8, 20, 0, {}, SlotShare(8, 8, 8)),
        # three wanting all: 3, 3, 2 by holder ("b" sorts between "a" and "c")
        (8, 8, 0, {"a": (0, 8), "c": (0, 8)}, SlotShare(3, 3, 3)),
        # another holds everything: nothing free yet, though its share is half
        (8, 8, 0, {"a": (8, 8)}, SlotShare(0, 0, 8)),
        # above its share it keeps its calls in flight, but may fill only its share
        (8, 8, 6, {"a": (0, 8)}, SlotShare(6, 4, 6)),
        # one wanting little leaves the rest to the other
        (8, 8, 0, {"a": (1, 1)}, SlotShare(7, 7, 8)),
        # wanting nothing, keeping nothing: no slots
        (8, 0, 0, {"a": (3, 8)}, SlotShare(0, 0, 3)),
    ],
)
def test_a_holder_gets_its_fair_share_of_what_the_others_leave_free(
    total: int,
    wanted: int,
    keep: int,
    others: dict[str, tuple[int, int]],
    expected: SlotShare,
) -> None:
    assert fleet_share(total, wanted, keep, others, "b") == expected


async def test_a_lapsed_lease_frees_its_slots_at_the_next_look(each_store: Store) -> None:
    look = each_store.share_slots
    first = await look("up", "w1", 4, keep=0, wanted=4, now=T0, until=T0 + 2)
    assert first == SlotShare(4, 4, 4)
    assert (await look("up", "w2", 4, keep=0, wanted=4, now=T0 + 1, until=T0 + 3)).slots == 0
    assert await each_store.fleet_slots_held(T0 + 1) == {"up": 4}
    # w1 died: past its lease its slots are w2's
    assert (await look("up", "w2", 4, keep=0, wanted=4, now=T0 + 3, until=T0 + 5)).slots == 4
    assert await each_store.fleet_slots_held(T0 + 3) == {"up": 4}
    await each_store.drop_slots("up", "w2")
    assert await each_store.fleet_slots_held(T0 + 3) == {}


async def test_workers_looking_at_once_never_hold_more_than_the_cap(
    postgres: PostgresServer,
) -> None:
    url = await postgres.new_database()
    stores = [await open_store(url) for _ in range(4)]

    async def look(i: int) -> SlotShare:
        return await stores[i].share_slots(
            "up", f"w{i}", 5, keep=0, wanted=5, now=T0, until=T0 + 30
        )

    try:
        shares = await asyncio.gather(*(look(i) for i in range(4) for _ in range(3)))
        at_once = await stores[0].fleet_slots_held(T0)
        for _ in range(2):  # every holder gives back what is above its share, then takes it
            settled = [await look(i) for i in range(4)]
    finally:
        for s in stores:
            await s.close()
    assert at_once["up"] <= 5  # one look at a time: two never took the same free slots
    assert max(share.in_use for share in shares) <= 5
    assert [share.slots for share in settled] == [2, 1, 1, 1]


def _pacer(**config: object) -> Pacer:
    values: dict[str, object] = {"name": "up", "kind": "mock", "max_concurrency": 16}
    return Pacer(BackendConfig.model_validate(values | config), Metrics())


def test_the_fleet_cap_bounds_the_limit_alone_too() -> None:
    """On SQLite (one process) the setting is an upper bound, as max_concurrency is."""
    assert _pacer(fleet_max_concurrency=5).limit == 5
    assert _pacer(fleet_max_concurrency=50).limit == 16


Keepers = Callable[[int], Awaitable[list[FleetSlots]]]


@pytest.fixture
async def keepers(postgres: PostgresServer) -> AsyncIterator[Keepers]:
    """``n`` processes' pacers of one backend with ``fleet_max_concurrency = CAP``, each
    with its FleetSlots on one database (looks made by the test, not by their loops)."""
    url = await postgres.new_database()
    stores: list[Store] = []

    async def make(n: int) -> list[FleetSlots]:
        made = []
        for i in range(n):
            stores.append(await open_store(url))
            pacer = _pacer(fleet_max_concurrency=CAP)
            made.append(
                FleetSlots(pacer, CAP, stores[-1], Metrics(), holder=f"w{i}", lease_seconds=30)
            )
        return made

    yield make
    for s in stores:
        await s.close()


async def test_a_process_fills_only_its_share_and_gives_back_the_rest(keepers: Keepers) -> None:
    a, b = await keepers(2)
    assert a.pacer.limit == 0  # nothing held yet
    waiting = asyncio.create_task(a.pacer.acquire(interactive=True))
    await asyncio.sleep(0)  # it queues, and asks
    assert a.pacer.waiting == 1
    await a.look()
    held: list[Slot] = [await waiting]
    held += [await a.pacer.acquire(interactive=True) for _ in range(CAP - 1)]
    assert (a.pacer.limit, a.pacer.in_flight, a.share.slots) == (CAP, CAP, CAP)

    b_waits = asyncio.create_task(b.pacer.acquire(interactive=True))
    await asyncio.sleep(0)
    await b.look()
    assert (b.share.slots, b.share.in_use) == (0, CAP)  # a holds them all
    a_more = asyncio.create_task(a.pacer.acquire(interactive=True))
    await asyncio.sleep(0)
    await a.look()
    assert (a.pacer.limit, a.share.slots) == (CAP // 2, CAP)  # its share; its calls kept
    for slot in held:
        slot.release()  # one goes to a's waiter; the rest is given back
    await a_more
    await a.look()
    assert a.share.slots == 1  # its one call in flight; nothing of it waits
    await b.look()
    await b_waits
    assert (b.share.slots, b.pacer.in_flight, b.share.in_use) == (CAP - 1, 1, CAP)


def test_a_process_paces_alone_while_the_database_is_away() -> None:
    with ephemeral_postgres() as server:
        asyncio.run(_outage(server))


async def _outage(server: PostgresServer) -> None:
    store = await open_store(await server.new_database(), timeouts=Timeouts(1.0, 1.0))
    keeper = FleetSlots(
        _pacer(fleet_max_concurrency=CAP), CAP, store, Metrics(), holder="w", lease_seconds=30
    )
    running = asyncio.create_task(keeper.run())
    try:
        slot = await keeper.pacer.acquire(interactive=True)  # asks, and gets one
        assert keeper.share.shared
        server.stop()
        await _until(lambda: not keeper.share.shared)
        assert keeper.pacer.limit == CAP  # its own limit, not stuck at what it held
        server.start()
        await _until(lambda: keeper.share.shared)
        assert keeper.share.slots == 1  # the call still in flight
        slot.release()
    finally:
        running.cancel()
        await store.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, looking every 10 ms, for 30 s at most (as conftest's
    wait_until, without blocking the loop that changes it)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


# -- three `batchd worker` processes --------------------------------------------------------


def _requests(n: int) -> list[Request]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-fleet",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"capped prompt {i}"}],
            },
        }
        for i in range(n)
    ]


@pytest.fixture
def capped(tmp_path: Path, postgres: PostgresServer) -> Callable[[FakeUpstream], Cluster]:
    def start(upstream: FakeUpstream) -> Cluster:
        db = postgres.new_database_sync(migrated=False)
        migrated = run_batchd("migrate", "--db", db)
        assert migrated.returncode == 0, migrated.stderr
        cluster = Cluster(tmp_path, db, upstream.url)
        # each worker alone would keep 8 in flight, 24 together
        table = backend_table(upstream.url, max_concurrency=8, fleet_max_concurrency=CAP)
        cluster.config.write_text(table)
        return cluster

    return start


def _results(client: anthropic.Anthropic, batch_id: str) -> Counter[str]:
    return Counter(r.custom_id for r in client.messages.batches.results(batch_id))


def test_three_workers_keep_one_concurrency_cap(
    capped: Callable[[FakeUpstream], Cluster],
) -> None:
    n = 200
    with serve_upstream(latency=0.02) as upstream:
        cluster = capped(upstream)
        try:
            cluster.start_api()
            cluster.start_workers(3)
            with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
                batch = client.messages.batches.create(requests=_requests(n))
                ended = wait_ended(client, batch.id, timeout=90)
                results = _results(client, batch.id)
        finally:
            cluster.stop()
    assert ended.request_counts.succeeded == n
    assert results == {f"r{i}": 1 for i in range(n)}
    assert upstream.peak <= CAP, upstream.peak
    assert upstream.admitted == n
    assert asyncio.run(_holders(cluster.db)) == {}  # stopped, each gave its slots back


async def _holders(db: str) -> dict[str, int]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT holder, slots FROM fleet_slots")
    finally:
        await conn.close()
    return {r["holder"]: r["slots"] for r in rows}


def _check_visible(url: str) -> None:
    """The API process (holding none) shows the fleet's slots from the database in /metrics,
    and its own share in /status/backends."""
    figures = scrape(url)
    assert figures["batchd_fleet_slots_held", (("backend", "upstream"),)] == CAP
    assert figures["batchd_backend_fleet_slots", (("backend", "upstream"),)] == 0
    states = msgspec.json.decode(httpx.get(f"{url}/status/backends").content, type=BackendStateList)
    [upstream] = [s for s in states.data if s.name == "upstream"]
    assert upstream.fleet == FleetState(max_concurrency=CAP, slots=0, in_use=0, shared=True)


def test_a_killed_workers_slots_come_back(capped: Callable[[FakeUpstream], Cluster]) -> None:
    """Worker 0 alone takes every slot, its calls held at the upstream; SIGKILLed, its
    calls answered into the void, the two workers started after it can only finish the
    batch with the slots its lapsed lease frees."""
    n = 60
    with serve_upstream(latency=0.01) as upstream:
        upstream.hold()
        cluster = capped(upstream)
        try:
            cluster.start_api()
            cluster.start_workers(1)
            with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
                batch = client.messages.batches.create(requests=_requests(n))
                wait_until(lambda: upstream.active == CAP, "worker 0 filled the cap")
                holders = asyncio.run(_holders(cluster.db))
                pid = cluster.workers[0].pid
                assert [s for h, s in holders.items() if h.split(":")[1] == str(pid)] == [CAP]
                _check_visible(cluster.url)
                cluster.kill_worker(0)
                upstream.release()  # the dead worker's calls end before anyone else starts
                wait_until(lambda: upstream.active == 0, "its calls ended")
                cluster.start_workers(2)
                ended = wait_ended(client, batch.id, timeout=90)
                results = _results(client, batch.id)
                left = asyncio.run(_holders(cluster.db))
        finally:
            cluster.stop()
    assert ended.request_counts.succeeded == n
    assert results == {f"r{i}": 1 for i in range(n)}
    assert upstream.peak <= CAP, upstream.peak
    assert not set(holders) & set(left)  # the dead worker's row was freed
