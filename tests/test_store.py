"""The store's promises on SQLite and PostgreSQL alike: counts agree with rows, results are
fenced, leases come back."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from batchd.domain import (
    CancelOutcome,
    ClaimedRequest,
    DeleteOutcome,
    Outcome,
    ProcessingStatus,
    RequestState,
)
from batchd.schemas.results import succeeded_line
from batchd.store import (
    NewRequest,
    Recorded,
    SchemaMismatch,
    Store,
    Sweep,
    open_store,
)
from batchd.store.queries import load_migrations, load_queries
from batchd.store.sqlite import SQLiteDriver
from tests.support.invariants import count_mismatches, pg_count_mismatches

T0 = 1_800_000_000.0
LATEST = load_migrations()[-1][0]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    url: str = request.getfixturevalue("postgres").new_database_sync()
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, migrate=store_url.startswith("sqlite"))
    yield s
    await s.close()
    if store_url.startswith("sqlite"):
        assert count_mismatches(Path(store_url.removeprefix("sqlite:///"))) == []
    else:
        assert await pg_count_mismatches(store_url) == []


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path}/s.db")
    yield s
    await s.close()


def _queued(n: int, backend: str = "b") -> list[NewRequest]:
    return [NewRequest(f"r{i}", backend, b"{}", RequestState.QUEUED) for i in range(n)]


def _ok(request: ClaimedRequest) -> Outcome:
    return Outcome(request, RequestState.SUCCEEDED, succeeded_line(request.custom_id, {}))


async def test_counts_follow_results_and_batch_ends(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(3))
    claimed = (await store.claim("b", [batch.seq], "w1", 10, T0 + 30)).requests
    assert await store.record("w1", [_ok(c) for c in claimed[:2]], T0 + 1) == Recorded(2, 0)
    mid = await store.get_batch("ws", "msgbatch_a")
    assert mid is not None
    assert (mid.counts.processing, mid.counts.succeeded) == (1, 2)
    assert await store.record("w1", [_ok(claimed[2])], T0 + 2) == Recorded(1, 1)
    done = await store.get_batch("ws", "msgbatch_a")
    assert done is not None
    assert (done.processing_status, done.ended_at) == (ProcessingStatus.ENDED, T0 + 2)


async def test_a_backlog_check_sees_the_workspace_and_a_refusal_stores_nothing(
    store: Store,
) -> None:
    first = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(3))
    claim = await store.claim("b", [first.seq], "w1", 1, T0 + 30)
    await store.record("w1", [_ok(claim.requests[0])], T0)
    await store.create_batch("msgbatch_other", "other", T0, T0 + 60, _queued(5))
    seen: list[tuple[int, int, int]] = []

    def refuse(unfinished: int, queued: int, tokens: int) -> None:
        seen.append((unfinished, queued, tokens))
        raise RuntimeError("over quota")

    with pytest.raises(RuntimeError):
        await store.create_batch("msgbatch_b", "ws", T0, T0 + 60, _queued(2), refuse)

    assert seen == [(1, 2, 0)]  # one unfinished batch of "ws", two of its requests not final
    assert await store.get_batch("ws", "msgbatch_b") is None
    listed = await store.list_batches("ws", 10, None, None)
    assert listed is not None
    assert [b.id for b in listed[0]] == ["msgbatch_a"]


async def test_a_worker_that_lost_its_lease_cannot_write(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1))
    [first] = (await store.claim("b", [batch.seq], "w1", 1, T0 + 5)).requests
    assert (await store.sweep(T0 + 6)).requeued == 1
    [second] = (await store.claim("b", [batch.seq], "w2", 1, T0 + 20)).requests
    assert (await store.record("w1", [_ok(first)], T0 + 7)).applied == 0  # fenced off
    assert (await store.record("w2", [_ok(second)], T0 + 8)).applied == 1
    assert (await store.record("w2", [_ok(second)], T0 + 9)).applied == 0  # recorded once only
    after = await store.get_batch("ws", "msgbatch_a")
    assert after is not None
    assert after.counts.succeeded == 1
    assert second.attempt == 2


async def test_renewed_leases_are_not_requeued(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2))
    claimed = (await store.claim("b", [batch.seq], "w1", 2, T0 + 5)).requests
    assert await store.renew_leases("w1", T0 + 50, [c.id for c in claimed]) == 2
    assert (await store.sweep(T0 + 6)).requeued == 0


async def test_only_the_leases_a_worker_knows_it_holds_are_renewed(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2))
    held, unheard = (await store.claim("b", [batch.seq], "w1", 2, T0 + 5)).requests
    assert await store.renew_leases("w1", T0 + 50, [held.id]) == 1
    assert await store.renew_leases("w2", T0 + 50, [unheard.id]) == 0  # not w2's
    assert (await store.sweep(T0 + 6)).requeued == 1  # the claim w1 never heard of


async def test_claims_go_in_prefix_key_order_within_a_batch(store: Store) -> None:
    keys = ["bb", "aa", "bb", "", "aa", "bb"]
    rows = [
        NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED, None, k) for i, k in enumerate(keys)
    ]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    first = (await store.claim("b", [batch.seq], "w1", 3, T0 + 5)).requests
    second = (await store.claim("b", [batch.seq], "w1", 3, T0 + 5)).requests
    # equal keys keep the batch's order; the watermark carries on from the last key claimed
    assert [c.custom_id for c in first + second] == ["r3", "r1", "r4", "r0", "r2", "r5"]


async def test_a_requeued_request_below_the_watermark_is_claimed_again(store: Store) -> None:
    rows = [
        NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED, None, k) for i, k in enumerate("ba")
    ]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    [lost] = (await store.claim("b", [batch.seq], "w1", 1, T0 + 5)).requests  # key "a"
    await store.claim("b", [batch.seq], "w1", 1, T0 + 50)  # key "b": the watermark passes it
    assert (await store.sweep(T0 + 6)).requeued == 1
    [again] = (await store.claim("b", [batch.seq], "w2", 1, T0 + 60)).requests
    assert (again.custom_id, again.attempt) == (lost.custom_id, 2)


async def test_claims_take_only_their_backend(store: Store) -> None:
    rows = [*_queued(2, "b"), NewRequest("x", "other", b"{}", RequestState.QUEUED)]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    claimed = (await store.claim("other", [batch.seq], "w1", 10, T0 + 5)).requests
    assert [c.custom_id for c in claimed] == ["x"]


async def test_cancel_settles_queued_requests_and_keeps_running_ones(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(5))
    [running] = (await store.claim("b", [batch.seq], "w1", 1, T0 + 30)).requests
    result = await store.cancel_batch("ws", "msgbatch_a", T0 + 1)
    assert result is not None
    canceled, outcome = result
    assert outcome is CancelOutcome.CANCELED
    assert (canceled.processing_status, canceled.counts.canceled) == ("canceling", 4)
    await store.record("w1", [_ok(running)], T0 + 2)
    ended = await store.get_batch("ws", "msgbatch_a")
    assert ended is not None
    assert ended.processing_status is ProcessingStatus.ENDED


async def test_lost_lease_in_a_canceling_batch_is_canceled(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1))
    await store.claim("b", [batch.seq], "w1", 1, T0 + 5)
    await store.cancel_batch("ws", "msgbatch_a", T0 + 1)
    assert await store.sweep(T0 + 6) == Sweep(requeued=1, expired=0, ended=1)
    after = await store.get_batch("ws", "msgbatch_a")
    assert after is not None
    assert after.counts.canceled == 1


async def test_expiry_settles_queued_and_running_requests(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 10, _queued(3))
    claim = await store.claim("b", [batch.seq], "w1", 1, T0 + 30)
    assert await store.claimable_batches(T0 + 10) == []
    # the claimed request's lease runs past the deadline: it expires all the same, as the
    # API's requests do, and the batch ends at its deadline
    assert await store.sweep(T0 + 10) == Sweep(requeued=0, expired=1, ended=1)
    after = await store.get_batch("ws", "msgbatch_a")
    assert after is not None
    assert (after.counts.expired, after.counts.processing) == (3, 0)
    assert after.processing_status is ProcessingStatus.ENDED
    # the worker's late result is fenced off
    assert (await store.record("w1", [_ok(claim.requests[0])], T0 + 11)).applied == 0


async def test_delete_only_when_ended_and_only_in_its_workspace(store: Store) -> None:
    await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1))
    assert await store.delete_batch("ws", "msgbatch_a") is DeleteOutcome.NOT_ENDED
    await store.cancel_batch("ws", "msgbatch_a", T0)
    await store.sweep(T0)
    assert await store.delete_batch("other", "msgbatch_a") is DeleteOutcome.NOT_FOUND
    assert await store.delete_batch("ws", "msgbatch_a") is DeleteOutcome.DELETED
    assert await store.get_batch("ws", "msgbatch_a") is None


async def test_results_come_in_pages_with_every_row(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(25))
    pages = [page async for page in store.iter_results(batch.seq, 10)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [r[1] for p in pages for r in p] == [f"r{i}" for i in range(25)]
    assert {(r[2], r[3]) for p in pages for r in p} == {("queued", None)}


async def test_list_pages_both_ways(store: Store) -> None:
    for i in range(5):
        await store.create_batch(f"msgbatch_{i}", "ws", T0 + i, T0 + 60, _queued(1))
    await store.create_batch("msgbatch_x", "other", T0, T0 + 60, _queued(1))
    first = await store.list_batches("ws", 2, None, None)
    assert first is not None
    assert ([b.id for b in first[0]], first[1]) == (
        ["msgbatch_4", "msgbatch_3"],
        True,
    )
    older = await store.list_batches("ws", 2, "msgbatch_1", None)
    assert older is not None
    assert ([b.id for b in older[0]], older[1]) == (["msgbatch_0"], False)
    newer = await store.list_batches("ws", 2, None, "msgbatch_1")
    assert newer is not None
    assert ([b.id for b in newer[0]], newer[1]) == (
        ["msgbatch_3", "msgbatch_2"],
        True,
    )
    assert await store.list_batches("ws", 2, "msgbatch_x", None) is None  # foreign cursor


async def test_migrations_apply_once_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    for _ in range(2):  # the second open finds nothing to do
        await (await open_store(url, migrate=True)).close()
    with closing(sqlite3.connect(tmp_path / "m.db")) as db, db:
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == (LATEST)
        db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (LATEST + 1,))
    with pytest.raises(SchemaMismatch, match="newer than this batchd"):
        await open_store(url, migrate=True)


PARAMS = [
    "ids",
    "seqs",
    "mark",
    "mark_key",
    "state",
    "result",
    "attempt",
    "now",
    "seq",
    "owner",
    "until",
    "limit",
    "backend",
    "after",
    "id",
    "workspace",
    "key_hash",
    "answer_key",
    "upto",
    "prefix",
    "custom_id",
    "state1",
    "state2",
    "state3",
    "key",
    "not_before",
    "keys",
    "dialect",
    "purpose",
]
HOT_QUERIES = [
    "get_batch",
    "list_newest",
    "list_older",
    "list_newer",
    "results_page",
    "claimable_batches",
    "claim",
    "renew_leases",
    "record_result",
    "settle_queued",
    "lock_batches",
    "requeue_lost",
    "expiring_batches",
    "finalize_all",
    "find_key",
    "errored_page",
    "queued_by_backend",
    "running_count",
    "next_mark",
    "mark_done",
    "recorded_page",
    "filtered_page",
    "request_result",
    "requests_in_states",
    "retries_of",
    "find_answers",
    "find_idempotency_key",
    "get_file",
    "list_files_desc",
    "list_files_asc",
    "file_chunks_page",
]


@pytest.mark.parametrize("name", HOT_QUERIES)
async def test_hot_queries_use_an_index(sqlite_store: Store, name: str, tmp_path: Path) -> None:
    sql = load_queries("sqlite")[name].sql
    params = dict.fromkeys(PARAMS, 1)
    with closing(sqlite3.connect(tmp_path / "s.db")) as db:
        plan = [row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    full_scans = [  # a scan of json_each() walks a list passed in, not a table
        step
        for step in plan
        if step.startswith("SCAN") and " USING " not in step and "json_each" not in step
    ]
    assert full_scans == [], plan


async def test_one_claim_takes_a_share_from_each_batch_in_order(store: Store) -> None:
    seqs = [
        (await store.create_batch(f"msgbatch_{i}", "ws", T0, T0 + 60, _queued(n))).seq
        for i, n in enumerate([5, 1, 5])
    ]
    claim = await store.claim("b", [seqs[2], seqs[0], seqs[1]], "w1", 6, T0 + 30, share=2)
    assert [c.batch_seq for c in claim.requests] == [seqs[2]] * 2 + [seqs[0]] * 2 + [seqs[1]]
    assert claim.exhausted == [seqs[1]]  # asked for two, it had one


async def test_errored_results_are_the_first_errored_rows_in_order(store: Store) -> None:
    rows = [
        NewRequest(f"r{i}", None, b"{}", RequestState.ERRORED, b"e%d" % i)
        if i % 2
        else NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED)
        for i in range(7)
    ]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    errored = await store.errored_results(batch.seq, 2)
    assert [(r.custom_id, r.result) for r in errored] == [("r1", b"e1"), ("r3", b"e3")]


async def test_request_figures_count_states_and_queues_per_backend(store: Store) -> None:
    a = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(3, "b"))
    await store.create_batch("msgbatch_b", "ws", T0, T0 + 60, _queued(2, "c"))
    [claimed, _] = (await store.claim("b", [a.seq], "w1", 2, T0 + 30)).requests
    await store.record("w1", [_ok(claimed)], T0 + 1)
    figures = await store.request_figures()
    assert figures.queued_by_backend == {"b": 1, "c": 2}
    assert {state.value: n for state, n in figures.by_state.items() if n} == {
        "queued": 3,
        "running": 1,
        "succeeded": 1,
    }


async def test_a_read_sees_every_commit_made_before_it_began(store: Store) -> None:
    """Reads running all the while (as under load) never hide a batch just created."""
    stop = asyncio.Event()

    async def keep_listing() -> None:
        while not stop.is_set():
            await store.list_batches("ws", 20, None, None)

    listers = [asyncio.create_task(keep_listing()) for _ in range(4)]
    missed = []
    for i in range(200):
        request = NewRequest("a", "mock", b"{}", RequestState.QUEUED)
        batch = await store.create_batch(f"msgbatch_{i:026d}", "ws", T0, T0 + 60, [request])
        if await store.get_batch("ws", batch.id) is None:
            missed.append(batch.id)
    stop.set()
    await asyncio.gather(*listers)

    assert missed == []


def test_both_dialects_offer_the_same_queries() -> None:
    assert load_queries("sqlite").keys() == load_queries("postgresql").keys()


async def test_a_new_batch_counts_its_requests_that_are_final_already(store: Store) -> None:
    rows = [*_queued(1), NewRequest("bad", None, b"{}", RequestState.ERRORED, b"e")]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    assert (batch.counts.processing, batch.counts.errored) == (1, 1)
    only_bad = rows[1:]
    done = await store.create_batch("msgbatch_b", "ws", T0, T0 + 60, only_bad)
    assert (done.processing_status, done.counts.errored) == (ProcessingStatus.ENDED, 1)


async def test_a_fenced_result_among_applied_ones_is_not_counted(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(3))
    lost, *held = (await store.claim("b", [batch.seq], "w1", 3, T0 + 5)).requests
    await store.renew_leases("w1", T0 + 50, [c.id for c in held])
    assert (await store.sweep(T0 + 6)).requeued == 1  # only ``lost`` went back
    [again] = (await store.claim("b", [batch.seq], "w2", 1, T0 + 50)).requests
    assert await store.record("w1", [_ok(c) for c in [lost, *held]], T0 + 7) == Recorded(2, 0)
    assert await store.record("w2", [_ok(again)], T0 + 8) == Recorded(1, 1)


async def test_a_result_recorded_after_its_batch_was_canceled_counts(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(3))
    [running] = (await store.claim("b", [batch.seq], "w1", 1, T0 + 30)).requests
    await store.cancel_batch("ws", "msgbatch_a", T0 + 1)
    assert await store.record("w1", [_ok(running)], T0 + 2) == Recorded(1, 1)
    ended = await store.get_batch("ws", "msgbatch_a")
    assert ended is not None
    assert (ended.counts.succeeded, ended.counts.canceled) == (1, 2)


async def test_counts_hold_when_records_cancels_sweeps_and_releases_interleave(
    store: Store,
) -> None:
    """Every writer at once, on batches past their deadline with leases lost and held: each
    request is counted once (the fixture checks every counter against the rows)."""
    seqs = [
        (await store.create_batch(f"msgbatch_{i}", "ws", T0, T0 + 10, _queued(40))).seq
        for i in range(3)
    ]
    lost = (await store.claim("b", seqs, "dead", 30, T0 + 5, share=10)).requests
    held = (await store.claim("b", seqs, "w1", 30, T0 + 50, share=10)).requests
    await asyncio.gather(
        *(store.record("w1", [_ok(c)], T0 + 11) for c in held),
        *(store.record("dead", [_ok(c)], T0 + 11) for c in lost[::2]),
        store.cancel_batch("ws", "msgbatch_1", T0 + 11),
        store.sweep(T0 + 11),
        store.sweep(T0 + 12),
        store.release_leases("dead"),
    )
    await store.sweep(T0 + 13)
    figures = await store.request_figures()
    assert sum(figures.by_state.values()) == 120
    assert figures.by_state[RequestState.SUCCEEDED] >= 30  # w1's leases were never lost
    assert (figures.by_state[RequestState.QUEUED], figures.by_state[RequestState.RUNNING]) == (0, 0)
    for i in range(3):
        batch = await store.get_batch("ws", f"msgbatch_{i}")
        assert batch is not None
        assert batch.processing_status is ProcessingStatus.ENDED


async def test_a_new_sqlite_database_and_its_wal_are_private(tmp_path: Path) -> None:
    """Prompts and results are readable by the server's own user only, whatever the umask."""
    old = os.umask(0o022)
    try:
        store = await open_store(f"sqlite:///{tmp_path}/p.db")
    finally:
        os.umask(old)
    try:
        modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path)}
    finally:
        await store.close()
    assert modes == {"p.db": 0o600, "p.db-wal": 0o600, "p.db-shm": 0o600}


async def test_a_shared_budget_grants_what_it_holds_and_refills_at_its_rate(
    store: Store,
) -> None:
    draw = store.draw_budget
    assert await draw("b/requests", 10.0, 20.0, 15.0, T0) == 15.0  # full on first use
    assert await draw("b/requests", 10.0, 20.0, 15.0, T0) == 5.0
    assert await draw("b/requests", 10.0, 20.0, 15.0, T0) == 0.0
    assert await draw("b/requests", 10.0, 20.0, 15.0, T0 + 1) == 10.0  # a second's refill
    assert await draw("b/tokens", 10.0, 20.0, 1.0, T0) == 1.0  # another budget, its own


async def test_a_bulk_write_reaches_the_database_file_after_its_commit(tmp_path: Path) -> None:
    """Its commit syncs the WAL and answers; a connection of its own copies it afterwards."""
    store = await open_store(f"sqlite:///{tmp_path}/s.db")
    driver = store.driver
    assert isinstance(driver, SQLiteDriver)
    try:
        async with driver.transaction() as tx:
            await tx.run_script("CREATE TABLE blobs (data BLOB);")
        async with driver.transaction(bulk=True) as tx:
            await tx.bulk_insert("blobs", ("data",), [(b"x" * 2**20,)] * 8)
        at_commit = (tmp_path / "s.db").stat().st_size
        await driver.wal_copied()
        copied = (tmp_path / "s.db").stat().st_size
    finally:
        await store.close()
    assert at_commit < 2**20 < 8 * 2**20 < copied
