"""Sending webhook deliveries: the engine's side of the outbox (batchd's own).

Beside the sweeper, ``WebhookSender.run`` claims the deliveries that are due (a lease, as
for requests: with several workers each is sent by one of them at a time), signs each per
the Standard Webhooks specification with its endpoint's ``whsec_`` secret and POSTs it.
A 2xx answer delivers it. Anything else is tried again with the same ``webhook-id``
after ``retry_base * 2**(attempt-1)`` seconds, at most ``retry_max``, for ``retry_window``
(24 h) from the event; then the delivery fails. An endpoint that has failed without a
success for ``retry_window`` (or since a delivery that has now given up first failed) is
disabled, its reason recorded, and its pending deliveries fail with it. ``deliver_due`` is
one round, for tests that move the clock by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks import Webhook

from batchd.domain import ClaimedDelivery, DeliveryState, WebhookEndpoint, rfc3339
from batchd.errors import StoreUnavailable
from batchd.ids import new_worker_id
from batchd.store import Store
from batchd.usecases.webhooks import url_problem

log = logging.getLogger(__name__)

CLAIM_LIMIT = 32  # deliveries sent at once by one sender
# A claimed delivery is leased for the attempt's timeout and this much more: after a sender
# dies mid-attempt, another sends it again once the lease has run out.
LEASE_MARGIN = 5.0
ERROR_CHARS = 300  # of an endpoint's answer kept as the delivery's last error


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 3600.0
    retry_window_seconds: float = 24 * 3600.0
    allow_private_urls: bool = False
    poll_interval: float = 1.0

    def delay(self, attempt: int) -> float:
        """The wait after the ``attempt``-th failed attempt."""
        return float(min(self.retry_base_seconds * 2.0 ** (attempt - 1), self.retry_max_seconds))


@dataclass(frozen=True, slots=True)
class _Attempt:
    status: int | None  # the endpoint's HTTP status; None when no answer came
    error: str | None  # None: delivered


class WebhookSender:
    def __init__(
        self,
        store: Store,
        settings: WebhookSettings,
        clock: Callable[[], float],
        *,
        wall: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.owner = owner or new_worker_id()
        self._store = store.webhooks
        self._settings = settings
        self._clock = clock
        self._wall = wall  # signature timestamps: receivers check them against their clock
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Send due deliveries until cancelled; woken at once when this process queues one."""
        queued = self._store.queued
        try:
            while True:
                try:
                    sent = await self.deliver_due()
                except StoreUnavailable as exc:
                    log.warning("webhook deliveries wait for the store: %s", exc)
                    sent = 0
                if sent:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.poll_interval):
                        await queued.wait()
                queued.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver_due(self) -> int:
        """Claim the deliveries due now and try each once; how many were tried."""
        now = self._clock()
        lease = self._settings.timeout_seconds + LEASE_MARGIN
        claimed = await self._store.claim(self.owner, CLAIM_LIMIT, now, now + lease)
        if claimed:
            await asyncio.gather(*(self._deliver(d) for d in claimed))
        return len(claimed)

    async def _deliver(self, delivery: ClaimedDelivery) -> None:
        found = await self._store.get_endpoint(delivery.endpoint_id)
        if found is None:  # deleted meanwhile, with its deliveries
            return
        endpoint, secret = found
        attempt = await self._send(endpoint, secret, delivery)
        now = self._clock()
        if attempt.error is None:
            await self._store.finish(
                self.owner, delivery, DeliveryState.DELIVERED,
                now=now, next_at=now, status=attempt.status, error=None,
            )  # fmt: skip
            if endpoint.failing_since is not None:
                await self._store.endpoint_succeeded(endpoint.id)
            return
        await self._failed(endpoint, delivery, attempt, now)

    async def _failed(
        self, endpoint: WebhookEndpoint, delivery: ClaimedDelivery, attempt: _Attempt, now: float
    ) -> None:
        settings = self._settings
        next_at = now + settings.delay(delivery.attempt)
        window_end = delivery.created_at + settings.retry_window_seconds
        state = DeliveryState.PENDING if next_at <= window_end else DeliveryState.FAILED
        error = attempt.error
        if state is DeliveryState.FAILED:
            error = f"gave up after {delivery.attempt} attempts: {error}"
        log.info(
            "webhook %s to %s failed (attempt %d): %s",
            delivery.webhook_id, endpoint.id, delivery.attempt, attempt.error,
        )  # fmt: skip
        recorded, first_failed = await self._store.finish(
            self.owner, delivery, state, now=now, next_at=next_at, status=attempt.status,
            error=error,
        )  # fmt: skip
        since = await self._store.endpoint_failed(endpoint.id, now)
        if since is None or not recorded:
            return
        gave_up = state is DeliveryState.FAILED and since <= (first_failed or now)
        if gave_up or now - since >= settings.retry_window_seconds:
            hours = settings.retry_window_seconds / 3600
            reason = (
                f"every delivery failed since {rfc3339(since)} ({hours:g} h); last: {attempt.error}"
            )
            log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)
            await self._store.disable_endpoint(endpoint.id, reason, now)

    async def _send(
        self, endpoint: WebhookEndpoint, secret: str, delivery: ClaimedDelivery
    ) -> _Attempt:
        problem = url_problem(endpoint.url, allow_private=self._settings.allow_private_urls)
        if problem is not None:
            return _Attempt(None, f"refused: {problem}")
        body = delivery.payload.decode()
        timestamp = datetime.fromtimestamp(int(self._wall()), UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "batchd-webhooks",
            "webhook-id": delivery.webhook_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery.webhook_id, timestamp, body),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
            )
        try:
            async with self._session.post(
                endpoint.url, data=delivery.payload, headers=headers, allow_redirects=False
            ) as answer:
                if 200 <= answer.status < 300:
                    return _Attempt(answer.status, None)
                text = (await answer.content.read(ERROR_CHARS)).decode(errors="replace")
                return _Attempt(answer.status, f"HTTP {answer.status}: {text}".strip())
        except TimeoutError:
            return _Attempt(None, f"no answer within {self._settings.timeout_seconds:g} s")
        except aiohttp.ClientError as exc:
            return _Attempt(None, f"{type(exc).__name__}: {exc}")
