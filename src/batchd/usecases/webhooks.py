"""Webhook endpoints (batchd's own): create, list, delete, test, their deliveries.

The CLI (``batchd webhooks ...``, straight on the database, like ``batchd keys``) and the
HTTP routes (``/v1/webhooks``, a key's own workspace) share these use cases. A receiver's
URL must be ``http(s)`` and, unless the operator allows private URLs, name a public host:
the same rule as the image URLs a backend may fetch (``batchd.backends.media``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from batchd.backends.media import UrlPolicy
from batchd.domain import BATCH_EVENTS, OPENAI_BATCH_EVENTS, Delivery, WebhookEndpoint
from batchd.errors import InvalidRequest, NotFound
from batchd.ids import new_endpoint_id, new_webhook_secret
from batchd.store import Store

EVENT_TYPES = tuple(e.value for e in (*BATCH_EVENTS, *OPENAI_BATCH_EVENTS))
MAX_URL_CHARS = 2048
_PUBLIC = UrlPolicy()


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why a receiver URL is refused, or None."""
    if len(url) > MAX_URL_CHARS:
        return f"the URL is longer than {MAX_URL_CHARS} characters"
    problem = _PUBLIC.problem(url)
    if problem is None:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return problem
    if allow_private:
        return None
    return (
        f"{parts.hostname} is a loopback, private or link-local host: receivers there are "
        "refused unless the config sets webhook_allow_private_urls = true"
    )


def check_events(events: Sequence[str]) -> tuple[str, ...]:
    """The event types asked for (all the batch events when none are named)."""
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest(
            f"events: unknown event type {unknown[0]!r}; expected some of {', '.join(EVENT_TYPES)}"
        )
    return tuple(dict.fromkeys(events)) or EVENT_TYPES


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"webhook endpoint {endpoint_id!r} not found")


class WebhookService:
    """The use cases, for one caller's workspace (``None``: the operator, from the CLI)."""

    def __init__(
        self, store: Store, clock: Callable[[], float], *, allow_private_urls: bool
    ) -> None:
        self._store = store.webhooks
        self._clock = clock
        self._allow_private = allow_private_urls

    async def create(
        self, workspace: str, url: str, events: Sequence[str]
    ) -> tuple[WebhookEndpoint, str]:
        """A new endpoint and its signing secret (shown this once)."""
        problem = url_problem(url, allow_private=self._allow_private)
        if problem is not None:
            raise InvalidRequest(f"url: {problem}")
        endpoint = WebhookEndpoint(
            new_endpoint_id(), workspace, url.strip(), check_events(events), self._clock(),
            None, None, None,
        )  # fmt: skip
        secret = new_webhook_secret()
        await self._store.create_endpoint(endpoint, secret)
        return endpoint, secret

    async def endpoints(self, workspace: str | None) -> list[WebhookEndpoint]:
        return await self._store.list_endpoints(workspace)

    async def get(self, workspace: str | None, endpoint_id: str) -> WebhookEndpoint:
        found = await self._store.get_endpoint(endpoint_id)
        if found is None or (workspace is not None and found[0].workspace != workspace):
            raise _not_found(endpoint_id)
        return found[0]

    async def delete(self, workspace: str | None, endpoint_id: str) -> None:
        await self.get(workspace, endpoint_id)
        if not await self._store.delete_endpoint(endpoint_id):
            raise _not_found(endpoint_id)

    async def test(self, workspace: str | None, endpoint_id: str) -> str:
        """Queue a ``webhook.test`` event to the endpoint; its webhook-id."""
        endpoint = await self.get(workspace, endpoint_id)
        return await self._store.enqueue_test(endpoint.id, endpoint.workspace, self._clock())

    async def deliveries(
        self, workspace: str | None, endpoint_id: str, limit: int
    ) -> list[Delivery]:
        await self.get(workspace, endpoint_id)
        return await self._store.list_deliveries(endpoint_id, limit)
