"""MessageBatch, its list page and the deleted marker, as JSON-ready dicts."""

from __future__ import annotations

from typing import Any

from batchd.domain import Batch, ProcessingStatus, rfc3339


def batch_to_wire(batch: Batch, *, origin: str, retention: float, now: float) -> dict[str, Any]:
    ended = batch.processing_status is ProcessingStatus.ENDED
    counts = batch.counts
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": batch.processing_status.value,
        "request_counts": {
            "processing": counts.processing,
            "succeeded": counts.succeeded,
            "errored": counts.errored,
            "canceled": counts.canceled,
            "expired": counts.expired,
        },
        "ended_at": rfc3339(batch.ended_at),
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.expires_at),
        "archived_at": rfc3339(batch.archived_at(retention, now)),
        "cancel_initiated_at": rfc3339(batch.cancel_initiated_at),
        "results_url": f"{origin}/v1/messages/batches/{batch.id}/results" if ended else None,
    }


def page_to_wire(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def deleted_to_wire(batch_id: str) -> dict[str, str]:
    return {"id": batch_id, "type": "message_batch_deleted"}
