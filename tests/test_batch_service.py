"""BatchService, the batch use cases, called directly on a real SQLite file with a clock the
test moves: create, get, list, cancel, delete, results. (The same promises through HTTP and
the SDK: tests/test_batches_api.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from batchd.backends.router import Router, backend_configs
from batchd.config import Settings
from batchd.domain import Batch, ProcessingStatus
from batchd.errors import InvalidRequest, NotFound
from batchd.store import Store, open_store
from batchd.usecases.batches import BatchLimits, BatchService
from tests.conftest import mock_request
from tests.support.clock import ManualClock
from tests.support.invariants import count_mismatches

T0 = 1_800_000_000.0
LIMITS = BatchLimits(max_requests=100, ttl_seconds=3600.0, retention_seconds=7200.0)
WS = "default"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(f"sqlite:///{tmp_path}/b.db")
    yield s
    await s.close()
    assert count_mismatches(tmp_path / "b.db") == []


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def created() -> list[None]:
    return []


@pytest.fixture
def service(store: Store, clock: ManualClock, created: list[None]) -> BatchService:
    router = Router(backend_configs(Settings()))
    return BatchService(store, router, LIMITS, clock, lambda: created.append(None))


def _body(*requests: dict[str, Any]) -> bytes:
    return json.dumps({"requests": list(requests)}).encode()


async def _create(service: BatchService, n: int = 2, workspace: str = WS) -> Batch:
    return await service.create(workspace, _body(*(mock_request(f"r{i}") for i in range(n))))


async def _results(service: BatchService, batch_id: str) -> list[dict[str, Any]]:
    chunks = [chunk async for chunk in await service.results(WS, batch_id)]
    return [json.loads(line) for line in b"".join(chunks).splitlines()]


async def test_create_stores_the_batch_at_the_clocks_time(
    service: BatchService, created: list[None]
) -> None:
    batch = await _create(service, 3)

    assert batch.id.startswith("msgbatch_")
    assert batch.processing_status is ProcessingStatus.IN_PROGRESS
    assert (batch.created_at, batch.expires_at) == (T0, T0 + LIMITS.ttl_seconds)
    assert batch.counts.processing == 3
    assert created == [None]  # the engine is told


async def test_a_request_for_an_unserved_model_is_stored_errored(service: BatchService) -> None:
    body = _body(mock_request("ok"), mock_request("nowhere", model="no-such-model"))

    batch = await service.create(WS, body)

    assert (batch.counts.processing, batch.counts.errored) == (1, 1)


async def test_a_bad_body_stores_nothing(service: BatchService, created: list[None]) -> None:
    with pytest.raises(InvalidRequest):
        await service.create(WS, b'{"requests": [{"custom_id": "a"}]}')

    assert await service.list(WS, 20, None, None) == ([], False)
    assert created == []


async def test_get_finds_a_batch_only_in_its_workspace(service: BatchService) -> None:
    batch = await _create(service)

    assert (await service.get(WS, batch.id)).id == batch.id
    with pytest.raises(NotFound):
        await service.get("elsewhere", batch.id)
    with pytest.raises(NotFound):
        await service.get(WS, "msgbatch_nope")


async def test_list_pages_newest_first(service: BatchService) -> None:
    ids = [(await _create(service, 1)).id for _ in range(3)]

    first, more = await service.list(WS, 2, None, None)
    rest, no_more = await service.list(WS, 2, first[-1].id, None)

    assert [b.id for b in first + rest] == ids[::-1]
    assert (more, no_more) == (True, False)


@pytest.mark.parametrize(
    ("after_id", "before_id", "error"),
    [
        ("msgbatch_a", "msgbatch_b", InvalidRequest),  # both cursors at once
        ("msgbatch_unknown", None, NotFound),  # a cursor that names no batch
    ],
)
async def test_list_refuses_bad_cursors(
    service: BatchService, after_id: str | None, before_id: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await service.list(WS, 20, after_id, before_id)


async def test_cancel_marks_the_batch_canceling_at_the_clocks_time(
    service: BatchService, clock: ManualClock
) -> None:
    batch = await _create(service)
    clock.advance(5)

    canceled = await service.cancel(WS, batch.id)

    assert canceled.processing_status is not ProcessingStatus.IN_PROGRESS
    assert canceled.cancel_initiated_at == T0 + 5


async def test_cancel_of_an_unknown_batch_is_not_found(service: BatchService) -> None:
    with pytest.raises(NotFound):
        await service.cancel(WS, "msgbatch_nope")


async def test_results_wait_until_the_batch_has_ended(service: BatchService) -> None:
    batch = await _create(service)

    with pytest.raises(InvalidRequest, match="has not ended"):
        await service.results(WS, batch.id)


async def _ended_by_cancel(service: BatchService, store: Store, clock: ManualClock) -> Batch:
    batch = await _create(service)
    await service.cancel(WS, batch.id)
    await store.sweep(clock())  # what the engine's sweeper does: the batch ends
    ended = await service.get(WS, batch.id)
    assert ended.processing_status is ProcessingStatus.ENDED
    return ended


async def test_a_canceled_batch_has_a_canceled_result_per_request(
    service: BatchService, store: Store, clock: ManualClock
) -> None:
    batch = await _ended_by_cancel(service, store, clock)

    results = await _results(service, batch.id)

    assert {r["custom_id"]: r["result"]["type"] for r in results} == {
        "r0": "canceled",
        "r1": "canceled",
    }
    with pytest.raises(InvalidRequest, match="already ended"):
        await service.cancel(WS, batch.id)


async def test_results_are_archived_after_the_retention_period(
    service: BatchService, store: Store, clock: ManualClock
) -> None:
    batch = await _ended_by_cancel(service, store, clock)

    clock.advance(LIMITS.retention_seconds - 1)
    assert len(await _results(service, batch.id)) == 2
    clock.advance(1)
    with pytest.raises(InvalidRequest, match="archived"):
        await service.results(WS, batch.id)


async def test_delete_only_an_ended_batch(
    service: BatchService, store: Store, clock: ManualClock
) -> None:
    running = await _create(service)
    ended = await _ended_by_cancel(service, store, clock)

    with pytest.raises(InvalidRequest, match="still being processed"):
        await service.delete(WS, running.id)
    await service.delete(WS, ended.id)
    with pytest.raises(NotFound):
        await service.get(WS, ended.id)
    with pytest.raises(NotFound):
        await service.delete(WS, ended.id)
