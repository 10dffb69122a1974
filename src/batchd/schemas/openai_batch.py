"""The OpenAI batch object of an engine batch: what ``/v1/batches`` answers and what the
OpenAI-face webhook events carry as ``data`` (``batchd.store.outbox``).

OpenAI's status is read from the engine's (``openai_status``): ``in_progress``,
``cancelling`` while a cancel waits for the requests in flight, then ``cancelled``;
``expired`` when the window closed on unfinished requests; ``failed`` when the input file
was refused at create (``errors``); else ``completed``. Results are ready when the batch
ends, so ``finalizing`` is passed at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from batchd.domain import Batch, ProcessingStatus
from batchd.schemas.openai import BatchErrors, BatchFields, BatchObject, BatchStatus, RequestCounts

_fields_decoder = msgspec.json.Decoder(BatchFields)


@dataclass(frozen=True, slots=True)
class OpenAIBatch:
    """A batch of the OpenAI face: the engine's batch and the face's own fields."""

    batch: Batch
    fields: BatchFields


def with_fields(batch: Batch) -> OpenAIBatch:
    assert batch.dialect_fields is not None
    return OpenAIBatch(batch, _fields_decoder.decode(batch.dialect_fields))


def openai_status(found: OpenAIBatch) -> BatchStatus:
    batch = found.batch
    if found.fields.errors:
        return "failed"
    if batch.processing_status is ProcessingStatus.IN_PROGRESS:
        return "in_progress"
    if batch.processing_status is ProcessingStatus.CANCELING:
        return "cancelling"
    if batch.cancel_initiated_at is not None:
        return "cancelled"
    return "expired" if batch.counts.expired else "completed"


def batch_to_wire(found: OpenAIBatch) -> BatchObject:
    batch, fields = found.batch, found.fields
    status = openai_status(found)
    created, ended = int(batch.created_at), _int(batch.ended_at)
    counts = batch.counts
    failed = counts.errored + counts.canceled + counts.expired
    is_ = status.__eq__
    return BatchObject(
        id=batch.id,
        endpoint=fields.endpoint,
        input_file_id=fields.input_file_id,
        completion_window=fields.completion_window,
        status=status,
        created_at=created,
        in_progress_at=None if is_("failed") else created,
        finalizing_at=ended if status in ("completed", "expired") else None,
        completed_at=ended if is_("completed") else None,
        failed_at=created if is_("failed") else None,
        expired_at=ended if is_("expired") else None,
        expires_at=int(batch.expires_at),
        cancelling_at=_int(batch.cancel_initiated_at),
        cancelled_at=ended if is_("cancelled") else None,
        output_file_id=fields.output_file_id if ended and counts.succeeded else None,
        error_file_id=fields.error_file_id if ended and failed else None,
        errors=BatchErrors(fields.errors) if fields.errors else None,
        request_counts=RequestCounts(counts.total, counts.succeeded, counts.errored),
        metadata=fields.metadata,
        model=fields.model,
    )


def _int(ts: float | None) -> int | None:
    return None if ts is None else int(ts)
