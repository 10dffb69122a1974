"""What the store hands out (frozen records), and the seam to a dialect's driver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from batchd.domain import ClaimedRequest, RequestState
from batchd.errors import BatchdError
from batchd.store.queries import Dialect


class SchemaMismatch(BatchdError):
    """The database schema is not the version this code expects."""


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request to insert; ``result`` is set when it is already final (bad params)."""

    custom_id: str
    backend: str | None
    params: bytes
    state: RequestState
    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class ResultRow:
    custom_id: str
    state: RequestState
    result: bytes | None


# One row of a results page, as the driver returns it (no object per row on this hot path):
# (id, custom_id, state, result line or None for canceled/expired requests).
ResultRecord = tuple[int, str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class Claim:
    requests: list[ClaimedRequest]
    exhausted: list[int]  # batches that had fewer queued requests than asked for


@dataclass(frozen=True, slots=True)
class Recorded:
    applied: int  # results written; the others were fenced off (their lease was lost)
    ended: int  # batches these results completed


@dataclass(frozen=True, slots=True)
class Sweep:
    requeued: int  # running requests whose lease had expired, back in the queue
    expired: int  # batches past their deadline whose queued requests became expired
    ended: int  # batches that had nothing left to do and are now ended


class Row(Protocol):
    """A database row read by position or column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class RequestFigures:
    """Server-wide figures for /metrics: stored requests by state, queued ones per backend."""

    by_state: dict[RequestState, int]
    queued_by_backend: dict[str, int]


class CancelOutcome(Enum):
    CANCELED = "canceled"  # this call started cancellation
    ALREADY_CANCELING = "already_canceling"
    ALREADY_ENDED = "already_ended"


class DeleteOutcome(Enum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    NOT_ENDED = "not_ended"


Params = Mapping[str, Any]
NO_PARAMS: Params = {}


class Tx(Protocol):
    """One write transaction of a driver, running named queries (store/*.sql)."""

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]: ...

    async def execute(self, query: str, params: Params = NO_PARAMS) -> int: ...  # rows changed

    # The query run once per row of ``rows`` (and the ``shared`` parameters): every row returned.
    async def fetch_each(self, query: str, rows: Sequence[Params], shared: Params) -> list[Row]: ...

    async def bulk_insert(self, table: str, columns: Sequence[str], rows: list[Any]) -> None: ...

    async def notify(self) -> None: ...  # wake the waiting workers once this commits

    async def run_script(self, sql: str) -> None: ...


class Driver(Protocol):
    """What a dialect gives the Store; its errors leave it as ``StoreUnavailable`` only."""

    dialect: Dialect

    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]: ...

    async def fetch_tuples(self, query: str, params: Params) -> list[tuple[Any, ...]]: ...

    # A transaction that is not durable (bookkeeping whose loss in a power cut only means a
    # request runs again) may commit without syncing to disk.
    def transaction(self, *, durable: bool = True) -> AbstractAsyncContextManager[Tx]: ...

    # Until work may have been queued (a batch created, leases returned), in this process or,
    # where the dialect can tell, in another; False after ``seconds``.
    async def wait_for_work(self, seconds: float) -> bool: ...

    async def close(self) -> None: ...


async def wait_for(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` and clear it; False after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    event.clear()
    return True
