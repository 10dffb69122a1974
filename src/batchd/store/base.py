"""The Store protocol: everything the use cases and the engine ask of a database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from batchd.domain import (
    FINAL_STATES,
    ApiKey,
    Batch,
    ClaimedRequest,
    Outcome,
    RawParams,
    RequestState,
)
from batchd.errors import BatchdError


class SchemaMismatch(BatchdError):
    """The database schema is not the version this code expects."""


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request to insert; ``result`` is set when it is already final (bad params)."""

    custom_id: str
    backend: str | None
    params: RawParams  # bytes, or a view into the create body
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


class Keyed(Protocol):
    """A database row read by column name (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class RequestFigures:
    """Server-wide figures for /metrics: stored requests by state, queued ones per backend."""

    by_state: dict[RequestState, int]
    queued_by_backend: dict[str, int]

    @classmethod
    def from_rows(
        cls, queued_by_backend: dict[str, int], running: int, finished: Keyed
    ) -> RequestFigures:
        """From the queued counts per backend, the running count, and the batch-row totals
        of the final states (keyed by state name)."""
        by_state = {
            RequestState.QUEUED: sum(queued_by_backend.values()),
            RequestState.RUNNING: running,
        }
        for state in FINAL_STATES:
            by_state[state] = int(finished[state.value])
        return cls(by_state, queued_by_backend)


class CancelOutcome(Enum):
    CANCELED = "canceled"  # this call started cancellation
    ALREADY_CANCELING = "already_canceling"
    ALREADY_ENDED = "already_ended"


class DeleteOutcome(Enum):
    DELETED = "deleted"
    NOT_FOUND = "not_found"
    NOT_ENDED = "not_ended"


class Store(Protocol):
    # batches, as the API sees them
    async def create_batch(
        self,
        batch_id: str,
        workspace: str,
        created_at: float,
        expires_at: float,
        requests: Sequence[NewRequest],
    ) -> Batch: ...

    async def get_batch(self, workspace: str, batch_id: str) -> Batch | None: ...

    async def list_batches(
        self, workspace: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool] | None:
        """Newest first; None when a cursor id is unknown in this workspace."""
        ...

    async def cancel_batch(
        self, workspace: str, batch_id: str, now: float
    ) -> tuple[Batch, CancelOutcome] | None: ...

    async def delete_batch(self, workspace: str, batch_id: str) -> DeleteOutcome: ...

    def iter_results(self, batch_seq: int, page_size: int) -> AsyncIterator[list[ResultRecord]]:
        """A batch's rows in request order, a page at a time."""
        ...

    async def errored_results(self, batch_seq: int, limit: int) -> list[ResultRow]:
        """The first ``limit`` errored requests of a batch, in request order."""
        ...

    # operators
    async def request_figures(self) -> RequestFigures: ...

    # the engine
    async def claimable_batches(self, now: float) -> list[int]: ...

    async def claim(
        self,
        backend: str,
        batch_seqs: Sequence[int],
        owner: str,
        limit: int,
        lease_until: float,
        *,
        share: int | None = None,
    ) -> Claim:
        """In one transaction, lease up to ``limit`` queued requests for ``backend``,
        at most ``share`` from each batch, taking the batches in the order given."""
        ...

    async def renew_leases(self, owner: str, lease_until: float, ids: Sequence[int]) -> int:
        """Extend the leases of these requests, where ``owner`` still holds them."""
        ...

    async def record(self, owner: str, outcomes: Sequence[Outcome], now: float) -> Recorded:
        """Write final results fenced by (owner, attempt), and end the batches they complete."""
        ...

    async def sweep(self, now: float) -> Sweep:
        """In one transaction: requeue lost leases, expire overdue batches, end finished ones."""
        ...

    async def release_leases(self, owner: str) -> int:
        """Return this owner's running requests to the queue (a graceful stop)."""
        ...

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait until work may have been queued (a batch created, leases returned), in this
        process or, where the dialect can tell, in another; False after ``seconds``."""
        ...

    # API keys
    async def create_key(self, key: ApiKey, key_hash: str) -> None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str, now: float) -> bool: ...

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None: ...

    async def count_active_keys(self) -> int: ...

    async def close(self) -> None: ...
