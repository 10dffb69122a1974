"""The store behind batchd's own extensions, on SQLite and PostgreSQL alike: results read
while a batch runs, retry links, kept answers, idempotency keys."""

from __future__ import annotations

import pytest

from batchd.domain import Outcome, RequestState
from batchd.schemas.results import succeeded_line
from batchd.store import IdempotencyKey, IdempotencyMismatch, NewRequest, Store
from tests.test_store import T0, _ok, _queued, store, store_url

__all__ = ["store", "store_url"]  # the fixtures, run here on both dialects


async def _recorded(store: Store, seq: int, after: int) -> tuple[int, list[str]]:
    upto = await store.results_mark(seq)
    ids = [r[1] async for page in store.iter_recorded(seq, after, upto, 2) for r in page]
    return upto, ids


async def test_each_read_of_the_recorded_results_gives_only_what_is_new(store: Store) -> None:
    rows = [NewRequest("bad", None, b"{}", RequestState.ERRORED, b"e"), *_queued(5)]
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, rows)
    mark, first = await _recorded(store, batch.seq, -1)
    assert first == ["bad"]
    claimed = (await store.claim("b", [batch.seq], "w1", 3, T0 + 30)).requests
    await store.record("w1", [_ok(r) for r in claimed], T0 + 1)
    mark, second = await _recorded(store, batch.seq, mark)
    assert second == ["r0", "r1", "r2"]
    await store.cancel_batch("ws", "msgbatch_a", T0 + 2)  # the queued rest: canceled
    mark, third = await _recorded(store, batch.seq, mark)
    assert third == ["r3", "r4"]
    assert await _recorded(store, batch.seq, mark) == (mark, [])


async def test_expired_requests_are_recorded_results_too(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2))
    await store.sweep(T0 + 61)
    assert (await _recorded(store, batch.seq, -1))[1] == ["r0", "r1"]


async def test_requests_expired_while_running_are_recorded_results_too(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2))
    await store.claim("b", [batch.seq], "w1", 1, T0 + 90)  # r0 still running at the deadline
    await store.sweep(T0 + 61)
    assert (await _recorded(store, batch.seq, -1))[1] == ["r0", "r1"]


async def test_a_retry_batch_names_the_batch_it_retries(store: Store) -> None:
    await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1))
    retry = await store.create_batch(
        "msgbatch_b", "ws", T0, T0 + 60, _queued(1), retry_of="msgbatch_a"
    )
    assert retry.retry_of == "msgbatch_a"
    assert await store.retries_of("ws", "msgbatch_a") == ["msgbatch_b"]
    assert await store.retries_of("other", "msgbatch_a") == []


async def test_a_kept_answer_is_found_by_its_key_and_counted_when_reused(store: Store) -> None:
    batch = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(2))
    first, second = (await store.claim("b", [batch.seq], "w1", 2, T0 + 30)).requests
    line = succeeded_line(first.custom_id, {"id": "m"})
    reused = Outcome(second, RequestState.SUCCEEDED, b"x", reused=True)
    await store.record(
        "w1", [Outcome(first, RequestState.SUCCEEDED, line, answer_key="k" * 32), reused], T0 + 1
    )
    assert await store.find_answers(["k" * 32, "j" * 32]) == {"k" * 32: line}
    ended = await store.get_batch("ws", "msgbatch_a")
    assert ended is not None
    assert ended.reused == 1


async def test_an_idempotency_key_gives_the_batch_it_made(store: Store) -> None:
    key = IdempotencyKey("k1", b"h" * 32, T0 - 86_400)
    made = await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1), idempotency=key)
    again = await store.create_batch("msgbatch_b", "ws", T0, T0 + 60, _queued(1), idempotency=key)
    assert again.id == made.id == "msgbatch_a"
    elsewhere = await store.create_batch(
        "msgbatch_c", "ws2", T0, T0 + 60, _queued(1), idempotency=key
    )
    assert elsewhere.id == "msgbatch_c"  # keys are a workspace's own
    other_body = IdempotencyKey("k1", b"o" * 32, T0 - 86_400)
    with pytest.raises(IdempotencyMismatch):
        await store.create_batch(
            "msgbatch_d", "ws", T0, T0 + 60, _queued(1), idempotency=other_body
        )
    assert await store.get_batch("ws", "msgbatch_d") is None


async def test_an_idempotency_key_is_forgotten_after_its_window(store: Store) -> None:
    key = IdempotencyKey("k1", b"h" * 32, T0 - 86_400)
    await store.create_batch("msgbatch_a", "ws", T0, T0 + 60, _queued(1), idempotency=key)
    later = IdempotencyKey("k1", b"o" * 32, T0 + 1)  # a day on: the first use is too old
    made = await store.create_batch(
        "msgbatch_b", "ws", T0 + 86_401, T0 + 90_000, _queued(1), idempotency=later
    )
    assert made.id == "msgbatch_b"
