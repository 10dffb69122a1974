"""Webhook event payloads (batchd's own): what a receiver's ``POST`` body holds.

Every event has the same envelope, whatever kind of batch it is about::

    {"id": "msg_...", "type": "message_batch.ended", "timestamp": "2026-...Z",
     "data": {...the object the event is about...}}

``id`` is the ``webhook-id`` header too: the same on every attempt, a receiver's
idempotency key. For the message batch events ``data`` is the batch as the Batches API
shows it (``type: "message_batch"``, its final ``request_counts`` for ``ended``), but for
``results_url`` and ``archived_at``, which depend on where and when it is read. An
OpenAI-face batch sends OpenAI's events instead (``batch.completed``, ``batch.failed``,
``batch.cancelled``, ``batch.expired``) with its OpenAI batch object as ``data``
(``batchd.schemas.openai_batch``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.domain import Batch, rfc3339


class WebhookEventPayload(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    type: str
    timestamp: str
    data: dict[str, Any]


def event_payload(webhook_id: str, event_type: str, now: float, data: dict[str, Any]) -> bytes:
    return msgspec.json.encode(WebhookEventPayload(webhook_id, event_type, rfc3339(now), data))


def batch_data(batch: Batch) -> dict[str, Any]:
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
        "created_at": rfc3339(batch.created_at),
        "ended_at": rfc3339(batch.ended_at),
        "expires_at": rfc3339(batch.expires_at),
        "cancel_initiated_at": rfc3339(batch.cancel_initiated_at),
    }
