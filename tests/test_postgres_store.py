"""PostgreSQL-only promises: many processes on one database claim, sweep and hear each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from batchd.domain import ClaimedRequest, Outcome, RequestState
from batchd.schemas.results import succeeded_line
from batchd.store import NewRequest, Store, open_store
from batchd.store.queries import load_queries
from tests.support.invariants import pg_count_mismatches
from tests.support.postgres import PostgresServer

T0 = 1_800_000_000.0
OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def url(postgres: PostgresServer) -> AsyncIterator[str]:
    url = await postgres.new_database()
    yield url
    assert await pg_count_mismatches(url) == []


@pytest.fixture
async def open_worker(url: str) -> AsyncIterator[OpenStore]:
    """Open another store on the same database, as another worker process would."""
    stores: list[Store] = []

    async def open_one() -> Store:
        stores.append(await open_store(url))
        return stores[-1]

    yield open_one
    for store in stores:
        await store.close()


def _queued(n: int) -> list[NewRequest]:
    return [NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED) for i in range(n)]


def _ok(request: ClaimedRequest) -> Outcome:
    return Outcome(request, RequestState.SUCCEEDED, succeeded_line(request.custom_id, {}))


async def test_concurrent_claims_never_hand_out_a_request_twice(open_worker: OpenStore) -> None:
    workers = [await open_worker() for _ in range(4)]
    batch = await workers[0].create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2000))

    async def drain(i: int, store: Store) -> list[int]:
        taken: list[int] = []
        while claimed := (await store.claim("b", [batch.seq], f"w{i}", 37, T0 + 30)).requests:
            taken += [c.id for c in claimed]
            await store.record(f"w{i}", [_ok(c) for c in claimed], T0 + 1)
        return taken

    taken = await asyncio.gather(*(drain(i, s) for i, s in enumerate(workers)))
    ids = [i for part in taken for i in part]
    assert len(ids) == len(set(ids)) == 2000
    assert sum(1 for part in taken if part) > 1  # the work was really shared
    done = await workers[0].get_batch("ws", "msgbatch_a")
    assert done is not None
    assert done.counts.succeeded == 2000


async def test_requeued_requests_below_the_watermark_are_claimed_again(
    open_worker: OpenStore,
) -> None:
    store = await open_worker()
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(6))
    first = (await store.claim("b", [batch.seq], "w1", 3, T0 + 5)).requests
    await store.claim("b", [batch.seq], "w2", 3, T0 + 50)  # the watermark is past them all
    assert (await store.sweep(T0 + 6)).requeued == 3  # w1's leases were lost
    again = (await store.claim("b", [batch.seq], "w3", 10, T0 + 50)).requests
    assert [c.custom_id for c in again] == [c.custom_id for c in first]


async def test_concurrent_sweeps_count_each_request_once(url: str, open_worker: OpenStore) -> None:
    workers = [await open_worker() for _ in range(4)]
    seqs = [
        (await workers[0].create_batch(f"msgbatch_{i}", "ws", T0, T0 + 10, _queued(50))).seq
        for i in range(3)
    ]
    await workers[0].claim("b", seqs, "dead", 90, T0 + 5, share=30)
    await workers[1].cancel_batch("ws", "msgbatch_1", T0 + 1)
    for now in (T0 + 6, T0 + 11):  # lost leases, then the deadline
        await asyncio.gather(*(w.sweep(now) for w in workers))
    assert await pg_count_mismatches(url) == []
    figures = await workers[0].request_figures()
    assert {s.value: n for s, n in figures.by_state.items() if n} == {
        "canceled": 50,
        "expired": 100,
    }


async def test_a_new_batch_wakes_a_waiting_worker(open_worker: OpenStore) -> None:
    api, worker = await open_worker(), await open_worker()
    await worker.wait_for_work(0.01)  # listening from now on
    waiting = asyncio.create_task(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    await api.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1))
    async with asyncio.timeout(2):
        assert await waiting


async def test_claims_start_at_the_watermark_in_the_queue_index(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET enable_seqscan = off")
        claim = load_queries("postgresql")["claim"]
        params = {"backend": "b", "seq": 1, "owner": "w", "until": 1.0, "limit": 10}
        params |= {"mark_key": "", "mark": 0}
        rows = await conn.fetch("EXPLAIN " + claim.sql, *[params[n] for n in claim.params])
    finally:
        await conn.close()
    plan = "\n".join(r[0] for r in rows)
    assert "Index Scan using requests_queued" in plan, plan
    # the scan starts at the watermark, (prefix key, id), not before it
    assert "(ROW(prefix_key, id) > " in plan, plan


async def test_workers_drawing_at_once_share_one_budget(open_worker: OpenStore) -> None:
    workers = [await open_worker() for _ in range(4)]
    draws = [w.draw_budget("b/requests", 1.0, 20.0, 8.0, T0) for w in workers for _ in range(3)]
    granted = await asyncio.gather(*draws)
    assert sum(granted) == 20.0  # the whole bucket, and not a unit more
