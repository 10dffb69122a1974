"""Message batches on the wire: the create body, MessageBatch, its list page, the deleted marker.

Each response type parses as the SDK's model of the same name (``anthropic.types.messages``).
The create body is decoded straight into ``CreateBatchRequest`` (``validation.parse_create_body``),
which keeps each request's ``params`` as the exact bytes received.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from batchd.domain import Batch, Priority, ProcessingStatus, rfc3339
from batchd.schedule import window_name
from batchd.schemas import Count, Time

CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
MAX_DOCUMENTED_REQUESTS = 100_000  # the default of ``max_requests_per_batch``

BatchId = Annotated[str, msgspec.Meta(pattern="^msgbatch_")]


# -- received ---------------------------------------------------------------------------------


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=CUSTOM_ID_PATTERN)]
    # Any object: params that break ``MessageParams`` make that request ``errored``, never
    # the create. Kept raw; ``validation`` checks that it is an object.
    params: Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "object"})]


class CreateBatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The create body. Also unique custom_ids, and at most ``max_requests_per_batch``
    requests (the document names the default); JSON Schema cannot say the first, the
    second is the server's setting."""

    requests: Annotated[
        list[BatchRequest],
        # minItems checked after the decode, so that an unknown key beside an empty list
        # is the fault named (``validation``)
        msgspec.Meta(extra_json_schema={"minItems": 1, "maxItems": MAX_DOCUMENTED_REQUESTS}),
    ]


class RetryBatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/messages/batches/{id}/retry`` (batchd's own; optional)."""

    result_types: Annotated[
        list[Literal["errored", "expired", "canceled"]], msgspec.Meta(min_length=1)
    ] = msgspec.field(default_factory=lambda: ["errored", "expired"])


# -- sent -------------------------------------------------------------------------------------


class MessageBatchRequestCounts(msgspec.Struct, forbid_unknown_fields=True):
    processing: Count
    succeeded: Count
    errored: Count
    canceled: Count
    expired: Count


class MessageBatch(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="message_batch"
):
    id: BatchId
    processing_status: ProcessingStatus
    request_counts: MessageBatchRequestCounts
    ended_at: Time | None
    created_at: Time
    expires_at: Time
    archived_at: Time | None
    cancel_initiated_at: Time | None
    results_url: str | None


class BatchSchedule(msgspec.Struct, forbid_unknown_fields=True):
    """batchd's own: a batch's priority and deadline, and whether it will make it
    (GET /v1/messages/batches/{id}/schedule)."""

    id: BatchId
    priority: str  # low | normal | high
    completion_window: str  # 1h .. 7d
    expires_at: Time
    projected_end_at: Time | None  # at the rate so far; null before a request has finished
    at_risk: bool  # will miss expires_at at the rate so far (or nothing done by half-time)


class MessageBatchList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[MessageBatch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedMessageBatch(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="message_batch_deleted"
):
    id: str


def batch_to_wire(batch: Batch, *, origin: str, retention: float, now: float) -> MessageBatch:
    ended = batch.processing_status is ProcessingStatus.ENDED
    counts = batch.counts
    return MessageBatch(
        id=batch.id,
        processing_status=batch.processing_status,
        request_counts=MessageBatchRequestCounts(
            counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired
        ),
        ended_at=rfc3339(batch.ended_at),
        created_at=rfc3339(batch.created_at),
        expires_at=rfc3339(batch.expires_at),
        archived_at=rfc3339(batch.archived_at(retention, now)),
        cancel_initiated_at=rfc3339(batch.cancel_initiated_at),
        results_url=f"{origin}/v1/messages/batches/{batch.id}/results" if ended else None,
    )


class BatchDetails(msgspec.Struct, forbid_unknown_fields=True):
    """What batchd knows of a batch beyond MessageBatch (``GET .../{id}/details``)."""

    id: BatchId
    retry_of: str | None  # the batch this one retries
    retried_by: list[str]  # the batches that retry this one, oldest first
    reused_answers: Count  # answers reused instead of upstream calls (reuse_answers)


def page_to_wire(data: list[MessageBatch], has_more: bool) -> MessageBatchList:
    return MessageBatchList(
        data=data,
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def schedule_to_wire(batch: Batch, now: float) -> BatchSchedule:
    return BatchSchedule(
        id=batch.id,
        priority=Priority(batch.priority).name.lower(),
        completion_window=window_name(batch.expires_at - batch.created_at),
        expires_at=rfc3339(batch.expires_at),
        projected_end_at=rfc3339(batch.projected_end(now)),
        at_risk=batch.at_risk(now),
    )
