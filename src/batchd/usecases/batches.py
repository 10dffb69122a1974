"""Batch use cases: create, get, list, cancel, delete, results. No HTTP, no SQL.

batchd's own extensions live here too: an idempotent create (a key and the body's digest),
the results recorded so far while a batch runs (a cursor: the results mark they reached),
and a retry batch of an ended batch's requests of some result types.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchd.backends.estimate import tokens_of_length
from batchd.backends.router import Router
from batchd.domain import (
    Batch,
    BatchDialect,
    CancelOutcome,
    DeleteOutcome,
    Priority,
    ProcessingStatus,
    RequestState,
)
from batchd.errors import ErrorType, InvalidRequest, NotFound, RateLimited
from batchd.ids import new_batch_id
from batchd.prefix import prefix_key
from batchd.schedule import Schedule
from batchd.schemas.results import canceled_line, errored_line, expired_line
from batchd.store import IdempotencyKey, NewRequest, Store
from batchd.store.store import ResultRecord
from batchd.validation import BatchItem, check_params, parse_create_body

RESULTS_PAGE = 500
IDEMPOTENCY_WINDOW = 24 * 3600.0  # seconds a create's Idempotency-Key stands for its batch
MAX_IDEMPOTENCY_KEY = 255  # characters
# What a retry takes by default, and what it may name.
RETRY_DEFAULT = (RequestState.ERRORED, RequestState.EXPIRED)
RETRYABLE = (RequestState.ERRORED, RequestState.EXPIRED, RequestState.CANCELED)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    max_requests: int
    ttl_seconds: float
    retention_seconds: float
    # A workspace's quotas (None: none): its unfinished batches, and their requests not yet
    # final, counting the batch being created.
    max_unfinished_batches: int | None = None
    max_queued_requests: int | None = None
    max_queued_input_tokens: int | None = None  # estimated on create (estimate.py)

    def backlog_check(
        self, new_requests: int, new_tokens: int = 0
    ) -> Callable[[int, int, int], None] | None:
        """What the store checks a workspace's backlog with before it stores a new batch."""
        quotas = (self.max_unfinished_batches, self.max_queued_requests)
        if quotas == (None, None) and self.max_queued_input_tokens is None:
            return None

        def check(unfinished: int, queued: int, tokens: int) -> None:
            batches = self.max_unfinished_batches
            if batches is not None and unfinished + 1 > batches:
                raise RateLimited(
                    f"this workspace has {unfinished} unfinished message batches, at most "
                    f"{batches} at once (max_unfinished_batches_per_workspace); retry once "
                    "one of them has ended"
                )
            requests = self.max_queued_requests
            if requests is not None and queued + new_requests > requests:
                raise RateLimited(
                    f"this workspace has {queued} requests waiting and this batch adds "
                    f"{new_requests}: at most {requests} at once "
                    "(max_queued_requests_per_workspace); retry once some have finished"
                )
            most = self.max_queued_input_tokens
            if most is not None and tokens + new_tokens > most:
                raise RateLimited(
                    f"this workspace has about {tokens} input tokens waiting and this batch "
                    f"adds about {new_tokens}: at most {most} at once "
                    "(max_queued_input_tokens_per_workspace); retry once some have finished"
                )

        return check


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"message batch {batch_id!r} not found")


class BatchServiceBase:
    """What the batch use cases of both faces (``BatchService``, ``OpenAIBatchService``) work
    with: the store, the router that checks each request's model, the limits, the clock, and
    ``on_created``, told of each new batch (the engine's wake-up)."""

    def __init__(
        self,
        store: Store,
        router: Router,
        limits: BatchLimits,
        clock: Callable[[], float],
        on_created: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._router = router
        self._limits = limits
        self._clock = clock
        self._on_created = on_created


class BatchService(BatchServiceBase):
    async def create(
        self,
        workspace: str,
        body: bytes | bytearray,
        schedule: Schedule | None = None,
        idempotency_key: str | None = None,
    ) -> Batch:
        """A new batch; ``schedule`` is batchd's own priority and completion window. With
        ``idempotency_key``, the batch the same key and body made within IDEMPOTENCY_WINDOW
        if there is one (400 if that key came with another body or schedule)."""
        schedule = schedule or Schedule()
        idempotency = idempotency_claim(idempotency_key, body, self._clock(), schedule)
        items = parse_create_body(body, max_requests=self._limits.max_requests)
        rows = self._prepare(items)
        return await self._store_new(workspace, rows, schedule, idempotency=idempotency)

    async def _store_new(
        self, workspace: str, rows: list[NewRequest], schedule: Schedule, **options: Any
    ) -> Batch:
        now = self._clock()
        queued, tokens = queued_input_tokens(rows)
        batch = await self._store.create_batch(
            new_batch_id(),
            workspace,
            now,
            now + (schedule.window or self._limits.ttl_seconds),
            rows,
            self._limits.backlog_check(queued, tokens),
            priority=int(schedule.priority),
            input_tokens=tokens,
            **options,
        )
        self._on_created()
        return batch

    async def retry(
        self, workspace: str, batch_id: str, result_types: Sequence[RequestState] = RETRY_DEFAULT
    ) -> Batch:
        """A new batch of the ended batch's requests whose results are of ``result_types``,
        with their custom_ids and params (checked again), recording which batch it retries."""
        batch = await self.get(workspace, batch_id)
        if batch.processing_status is not ProcessingStatus.ENDED:
            raise InvalidRequest(
                f"message batch {batch_id!r} has not ended yet; only an ended batch can be retried"
            )
        items = [
            BatchItem(custom_id, params)
            async for page in self._store.iter_requests_in(batch.seq, result_types, RESULTS_PAGE)
            for _, custom_id, params in page
        ]
        if not items:
            named = " or ".join(repr(t.value) for t in result_types)
            raise InvalidRequest(
                f"message batch {batch_id!r} has no request whose result is {named}: "
                "nothing to retry"
            )
        # The retry keeps the original's priority and completion window (batchd's own).
        schedule = Schedule(Priority(batch.priority), batch.expires_at - batch.created_at)
        return await self._store_new(workspace, self._prepare(items), schedule, retry_of=batch.id)

    def _prepare(self, items: list[BatchItem]) -> list[NewRequest]:
        """Check each request's params now; a bad one is stored already errored."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return [self._prepare_one(item) for item in items]
        finally:
            if gc_was_enabled:
                gc.enable()

    def _prepare_one(self, item: BatchItem) -> NewRequest:
        try:
            params = check_params(item.params)
            backend = self._router.route(params.model)
            if backend is None:
                message = f"model: {params.model!r} is not served here"
                return _errored(item, "not_found_error", message)
            self._router.check_max_tokens(backend, params.max_tokens)
            self._router.check_urls(backend, params)
        except InvalidRequest as exc:
            return _errored(item, "invalid_request_error", exc.message)
        key = prefix_key(params) if self._router.orders_by_prefix(backend) else ""
        return NewRequest(item.custom_id, backend, item.params, RequestState.QUEUED, None, key)

    async def get(self, workspace: str, batch_id: str) -> Batch:
        batch = await self._store.get_batch(workspace, batch_id)
        if batch is None or batch.dialect is not BatchDialect.ANTHROPIC:
            raise _not_found(batch_id)
        return batch

    async def lineage(self, workspace: str, batch_id: str) -> tuple[Batch, list[str]]:
        """The batch, and the ids of the batches that retry it, oldest first."""
        batch = await self.get(workspace, batch_id)
        return batch, await self._store.retries_of(workspace, batch_id)

    async def list(
        self, workspace: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[Batch], bool]:
        if after_id and before_id:
            raise InvalidRequest("after_id and before_id cannot be used together")
        page = await self._store.list_batches(workspace, limit, after_id, before_id)
        if page is None:
            raise _not_found(before_id or after_id or "")
        return page

    async def cancel(self, workspace: str, batch_id: str) -> Batch:
        found = await self._store.cancel_batch(workspace, batch_id, self._clock())
        if found is None:
            raise _not_found(batch_id)
        batch, outcome = found
        if outcome is CancelOutcome.ALREADY_ENDED:
            raise InvalidRequest(
                f"message batch {batch_id!r} has already ended and cannot be canceled"
            )
        return batch

    async def delete(self, workspace: str, batch_id: str) -> None:
        outcome = await self._store.delete_batch(workspace, batch_id)
        if outcome is DeleteOutcome.NOT_FOUND:
            raise _not_found(batch_id)
        if outcome is DeleteOutcome.NOT_ENDED:
            raise InvalidRequest(
                f"message batch {batch_id!r} is still being processed; cancel it and wait "
                "until it has ended before deleting it"
            )

    async def results(self, workspace: str, batch_id: str) -> AsyncIterator[bytes]:
        """Check the batch can be read now, then return its JSONL, one chunk per page."""
        batch = await self.get(workspace, batch_id)
        if batch.processing_status is not ProcessingStatus.ENDED:
            raise InvalidRequest(
                f"message batch {batch_id!r} has not ended yet; results are available once "
                "its processing_status is 'ended'"
            )
        if batch.archived_at(self._limits.retention_seconds, self._clock()) is not None:
            raise InvalidRequest(f"the results of message batch {batch_id!r} have been archived")
        return self._jsonl(batch.seq)

    async def recorded_results(
        self, workspace: str, batch_id: str, after: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        """The results recorded so far (after the cursor ``after``, if given), in any status,
        as JSONL in the order they were recorded, and the cursor that reads on from them."""
        batch = await self.get(workspace, batch_id)
        if batch.archived_at(self._limits.retention_seconds, self._clock()) is not None:
            raise InvalidRequest(f"the results of message batch {batch_id!r} have been archived")
        upto, pages = await recorded_pages(self._store, batch.seq, after)
        return upto, _jsonl(pages)

    def _jsonl(self, seq: int) -> AsyncIterator[bytes]:
        return _jsonl(self._store.iter_results(seq, RESULTS_PAGE))


def queued_input_tokens(rows: Sequence[NewRequest]) -> tuple[int, int]:
    """A new batch's requests that will run (not those refused before they ran) and their
    input tokens, estimated from their params' length (``tokens_of_length``): what the
    backlog quota and the batch's ``input_tokens`` count, on either face."""
    queued = [len(row.params) for row in rows if row.state is RequestState.QUEUED]
    return len(queued), sum(tokens_of_length(n) for n in queued)


async def recorded_pages(
    store: Store, batch_seq: int, after: int | None
) -> tuple[int, AsyncIterator[list[ResultRecord]]]:
    """The cursor of the results recorded so far, and those after the cursor ``after`` (all
    if None) up to it, in the order they were recorded: a partial read of either face."""
    upto = await store.results_mark(batch_seq)
    if after is not None and after > upto:
        raise InvalidRequest(f"after: {after} is not a results cursor of this batch")
    return upto, store.iter_recorded(batch_seq, -1 if after is None else after, upto, RESULTS_PAGE)


def idempotency_claim(
    key: str | None, body: bytes | bytearray, now: float, schedule: Schedule, face: bytes = b""
) -> IdempotencyKey | None:
    """What a create's Idempotency-Key (None: no header) claims in the store: its body's
    digest (``face`` tells the OpenAI face's bodies apart), for IDEMPOTENCY_WINDOW."""
    if key is None:
        return None
    _check_idempotency_key(key)
    digest = _create_digest(body, schedule, face)
    return IdempotencyKey(key, digest, now - IDEMPOTENCY_WINDOW)


def _check_idempotency_key(key: str) -> None:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key: give 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )


def _create_digest(body: bytes | bytearray, schedule: Schedule, face: bytes) -> bytes:
    """What an Idempotency-Key stands for: the body, and batchd's own schedule headers where
    they ask for other than the defaults (so a key's digest without them is the body's)."""
    digest = hashlib.sha256(face)
    digest.update(body)
    if schedule != Schedule():
        digest.update(f"\n{int(schedule.priority)} {schedule.window}".encode())
    return digest.digest()


async def _jsonl(pages: AsyncIterator[list[ResultRecord]]) -> AsyncIterator[bytes]:
    async for page in pages:
        # Stored lines are spliced as they are; only canceled/expired ones are made here.
        yield b"".join([r[3] + b"\n" if r[3] is not None else _line(r[1], r[2]) for r in page])


def _errored(item: BatchItem, error_type: ErrorType, message: str) -> NewRequest:
    line = errored_line(item.custom_id, error_type, message)
    return NewRequest(item.custom_id, None, item.params, RequestState.ERRORED, line)


def _line(custom_id: str, state: str) -> bytes:
    """The line of a request with no stored result."""
    if state == RequestState.CANCELED:
        return canceled_line(custom_id) + b"\n"
    if state == RequestState.EXPIRED:
        return expired_line(custom_id) + b"\n"
    # An ended batch has no unfinished rows; say so plainly rather than drop a line.
    line = errored_line(custom_id, "api_error", f"request left in state {state}")
    return line + b"\n"
