"""The webhook outbox, written inside the store's transactions.

An event becomes one ``webhook_deliveries`` row per endpoint of the workspace that takes
its type, in the transaction of the change that causes it (a batch ending, a cancel
accepted, a deadline passed): the change and its event commit together or not at all,
and an engine sends the row later, as often as it takes (``batchd.engine.webhooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from batchd.domain import Batch, BatchDialect, WebhookEvent
from batchd.ids import new_webhook_id
from batchd.schemas.events import batch_data, event_payload
from batchd.schemas.openai_batch import batch_to_wire, openai_status, with_fields

if TYPE_CHECKING:
    from batchd.store.store import Tx


async def subscribers(tx: Tx, workspace: str, event: str) -> list[str]:
    """The enabled endpoints of ``workspace`` that take ``event``."""
    rows = await tx.fetch("subscribed_endpoints", {"workspace": workspace})
    return [row["id"] for row in rows if event in row["events"].split()]


async def enqueue(
    tx: Tx, endpoints: list[str], event: str, data: dict[str, Any], now: float
) -> str:
    """One delivery of the event per endpoint, all under one ``webhook-id``."""
    webhook_id = new_webhook_id()
    payload = event_payload(webhook_id, event, now, data)
    for endpoint in endpoints:
        await tx.execute(
            "insert_delivery",
            {
                "endpoint_id": endpoint,
                "webhook_id": webhook_id,
                "event_type": event,
                "payload": payload,
                "now": now,
            },
        )
    return webhook_id


_OPENAI_ENDS = {
    "completed": WebhookEvent.OPENAI_BATCH_COMPLETED,
    "failed": WebhookEvent.OPENAI_BATCH_FAILED,
    "cancelled": WebhookEvent.OPENAI_BATCH_CANCELLED,
    "expired": WebhookEvent.OPENAI_BATCH_EXPIRED,
}


async def emit_batch_event(tx: Tx, event: WebhookEvent, batch: Batch, now: float) -> int:
    """The event of a batch, to its workspace's endpoints; how many were queued.

    A message batch sends ``event`` with the batch as ``data``. An OpenAI-face batch sends
    OpenAI's events instead, with its OpenAI batch object as ``data``: one when it ends,
    named by its final status (``batch.completed``, ``batch.failed``, ``batch.cancelled``,
    ``batch.expired``); an accepted cancel and a passed deadline are told by that one.
    """
    found = None
    if batch.dialect is BatchDialect.OPENAI:
        if event is not WebhookEvent.BATCH_ENDED:
            return 0
        found = with_fields(batch)
        event = _OPENAI_ENDS[openai_status(found)]
    endpoints = await subscribers(tx, batch.workspace, event)
    if endpoints:
        data = batch_data(batch) if found is None else msgspec.to_builtins(batch_to_wire(found))
        await enqueue(tx, endpoints, event, data, now)
    return len(endpoints)
