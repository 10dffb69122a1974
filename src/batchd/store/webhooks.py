"""Webhook endpoints and the deliveries of their events: the store's side of webhooks.

Deliveries are claimed like requests: a claim leases due rows to one sender (``SKIP
LOCKED`` on PostgreSQL, the one writer on SQLite) by moving their ``next_attempt_at`` to
the lease's end, so that a row whose sender died is due again then, and what a sender
records is fenced by (owner, attempt). With several workers, each event is sent by one
of them at a time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from batchd.domain import (
    ClaimedDelivery,
    Delivery,
    DeliveryState,
    WebhookEndpoint,
    WebhookEvent,
)
from batchd.store.outbox import enqueue

if TYPE_CHECKING:
    from batchd.store.store import Driver


class WebhookStore:
    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self.queued = asyncio.Event()  # set when this process wrote deliveries

    def wake(self, queued: int) -> None:
        if queued:
            self.queued.set()

    async def create_endpoint(self, endpoint: WebhookEndpoint, secret: str) -> None:
        params = {
            "id": endpoint.id,
            "workspace": endpoint.workspace,
            "url": endpoint.url,
            "secret": secret,
            "events": " ".join(endpoint.events),
            "created_at": endpoint.created_at,
        }
        async with self._driver.transaction() as tx:
            await tx.execute("insert_endpoint", params)

    async def list_endpoints(self, workspace: str | None) -> list[WebhookEndpoint]:
        """A workspace's endpoints (every workspace's where None), oldest first."""
        if workspace is None:
            rows = await self._driver.fetch("list_all_endpoints")
        else:
            rows = await self._driver.fetch("list_endpoints", {"workspace": workspace})
        return [WebhookEndpoint.from_row(r) for r in rows]

    async def get_endpoint(self, endpoint_id: str) -> tuple[WebhookEndpoint, str] | None:
        """An endpoint and its signing secret."""
        rows = await self._driver.fetch("endpoint_by_id", {"id": endpoint_id})
        return (WebhookEndpoint.from_row(rows[0]), rows[0]["secret"]) if rows else None

    async def delete_endpoint(self, endpoint_id: str) -> bool:
        """Delete an endpoint and its deliveries (sent or not)."""
        async with self._driver.transaction() as tx:
            await tx.execute("delete_endpoint_deliveries", {"id": endpoint_id})
            return await tx.execute("delete_endpoint", {"id": endpoint_id}) == 1

    async def enqueue_test(self, endpoint_id: str, workspace: str, now: float) -> str:
        """A ``webhook.test`` event to this endpoint alone; its webhook-id."""
        async with self._driver.transaction() as tx:
            data = {"endpoint_id": endpoint_id, "workspace": workspace}
            webhook_id = await enqueue(tx, [endpoint_id], WebhookEvent.TEST, data, now)
        self.wake(1)
        return webhook_id

    async def claim(
        self, owner: str, limit: int, now: float, lease_until: float
    ) -> list[ClaimedDelivery]:
        params = {"owner": owner, "limit": limit, "now": now, "until": lease_until}
        async with self._driver.transaction(durable=False) as tx:
            rows = await tx.fetch("claim_deliveries", params)
        return [ClaimedDelivery(*r) for r in rows]

    async def finish(
        self,
        owner: str,
        delivery: ClaimedDelivery,
        state: DeliveryState,
        *,
        now: float,
        next_at: float,
        status: int | None,
        error: str | None,
    ) -> tuple[bool, float | None]:
        """Record an attempt's outcome: whether it was recorded (not when the lease was lost
        meanwhile), and when this delivery first failed."""
        params = {
            "id": delivery.id,
            "owner": owner,
            "attempt": delivery.attempt,
            "state": state,
            "next_at": next_at,
            "status": status,
            "error": error,
            "finished_at": None if state is DeliveryState.PENDING else now,
            "failed_at": None if state is DeliveryState.DELIVERED else now,
        }
        async with self._driver.transaction() as tx:
            rows = await tx.fetch("finish_delivery", params)
        return (True, rows[0][0]) if rows else (False, None)

    async def endpoint_succeeded(self, endpoint_id: str) -> None:
        async with self._driver.transaction(durable=False) as tx:
            await tx.execute("endpoint_succeeded", {"id": endpoint_id})

    async def endpoint_failed(self, endpoint_id: str, now: float) -> float | None:
        """Mark the endpoint failing (from now, unless it already was): since when."""
        async with self._driver.transaction() as tx:
            rows = await tx.fetch("endpoint_failed", {"id": endpoint_id, "now": now})
        return float(rows[0][0]) if rows else None

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: float) -> None:
        """Disable the endpoint, saying why; its pending deliveries fail with that reason."""
        async with self._driver.transaction() as tx:
            params = {"id": endpoint_id, "now": now}
            await tx.execute("disable_endpoint", params | {"reason": reason})
            await tx.execute("fail_pending_deliveries", params | {"error": reason})

    async def list_deliveries(self, endpoint_id: str, limit: int) -> list[Delivery]:
        """An endpoint's deliveries, newest first."""
        rows = await self._driver.fetch("list_deliveries", {"id": endpoint_id, "limit": limit})
        return [Delivery.from_row(r) for r in rows]
