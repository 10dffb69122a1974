"""The webhook outbox, written inside the store's transactions.

An event becomes one ``webhook_deliveries`` row per endpoint of the workspace that takes
its type, in the transaction of the change that causes it (a batch ending, a cancel
accepted, a deadline passed): the change and its event commit together or not at all,
and an engine sends the row later, as often as it takes (``batchd.engine.webhooks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchd.domain import Batch, WebhookEvent
from batchd.ids import new_webhook_id
from batchd.schemas.events import batch_data, event_payload

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


async def emit_batch_event(tx: Tx, event: WebhookEvent, batch: Batch, now: float) -> int:
    """The event of a message batch, to its workspace's endpoints; how many were queued."""
    endpoints = await subscribers(tx, batch.workspace, event)
    if endpoints:
        await enqueue(tx, endpoints, event, batch_data(batch), now)
    return len(endpoints)
