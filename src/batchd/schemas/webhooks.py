"""Webhook endpoints and deliveries on the wire (batchd's own ``/v1/webhooks`` routes)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from batchd.domain import Delivery, WebhookEndpoint, rfc3339
from batchd.errors import InvalidRequest

EventType = Literal[
    "message_batch.ended",
    "message_batch.canceled",
    "message_batch.expired",
    "batch.completed",
    "batch.failed",
    "batch.cancelled",
    "batch.expired",
]


class CreateWebhookEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    """The URL must also name a public host unless the server allows private ones."""

    url: Annotated[str, msgspec.Meta(max_length=2048, pattern="^[hH][tT][tT][pP][sS]?://")]
    events: list[EventType] = msgspec.field(default_factory=list)  # none: every batch event


class WebhookEndpointOut(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="webhook_endpoint"
):
    id: str
    url: str
    events: list[str]
    created_at: str
    disabled_at: str | None
    disabled_reason: str | None
    secret: str | None = None  # in the create's answer only


class WebhookDeliveryOut(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="webhook_delivery"
):
    id: int
    webhook_id: str
    event_type: str
    state: str
    attempts: int
    created_at: str
    next_attempt_at: str | None
    last_status: int | None
    last_error: str | None
    finished_at: str | None


class WebhookTestOut(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="webhook_test"
):
    endpoint_id: str
    webhook_id: str


class WebhookEndpointList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[WebhookEndpointOut]


class WebhookDeliveryList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[WebhookDeliveryOut]  # newest first


class DeletedWebhookEndpoint(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="webhook_endpoint_deleted"
):
    id: str


_create_decoder = msgspec.json.Decoder(CreateWebhookEndpoint)


def parse_create(body: bytes | bytearray) -> CreateWebhookEndpoint:
    try:
        return _create_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included: it names the field
        raise InvalidRequest(f"request body: {exc}") from None


def endpoint_to_wire(endpoint: WebhookEndpoint, secret: str | None = None) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        created_at=rfc3339(endpoint.created_at),
        disabled_at=rfc3339(endpoint.disabled_at),
        disabled_reason=endpoint.disabled_reason,
        secret=secret,
    )


def delivery_to_wire(delivery: Delivery) -> WebhookDeliveryOut:
    pending = delivery.state == "pending"
    return WebhookDeliveryOut(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_type=delivery.event_type,
        state=delivery.state.value,
        attempts=delivery.attempts,
        created_at=rfc3339(delivery.created_at),
        next_attempt_at=rfc3339(delivery.next_attempt_at) if pending else None,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        finished_at=rfc3339(delivery.finished_at),
    )
