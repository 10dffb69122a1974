"""Webhooks: events written with the changes that cause them, signed, delivered at least once."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import anthropic
import msgspec
import openai
import pytest
import standardwebhooks

from batchd.backends.base import OPENAI_CHAT
from batchd.domain import (
    BatchDialect,
    ClaimedRequest,
    DeliveryState,
    Outcome,
    RequestState,
    TokenUsage,
    WebhookEndpoint,
)
from batchd.engine.webhooks import WebhookSender, WebhookSettings
from batchd.errors import InvalidRequest
from batchd.schemas.openai import BatchFields
from batchd.schemas.results import succeeded_line
from batchd.schemas.webhooks import EventType
from batchd.store import NewRequest, Store, open_store
from batchd.usecases.webhooks import EVENT_TYPES, WebhookService
from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.clock import ManualClock
from tests.support.keys import make_keys
from tests.support.process import run_batchd
from tests.support.receiver import Receiver, serve_receiver

T0 = 1_800_000_000.0
OPENAI = BatchDialect.OPENAI
HOUR = 3600.0


@pytest.fixture
def store(each_store: Store) -> Store:
    """A migrated store on SQLite and on PostgreSQL."""
    return each_store


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as running:
        yield running


def _service(store: Store, clock: ManualClock | None = None) -> WebhookService:
    return WebhookService(store, clock or (lambda: T0), allow_private_urls=True)


async def _finish_batch(store: Store, workspace: str, batch_id: str, n: int = 2) -> None:
    requests = [NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED) for i in range(n)]
    batch = await store.create_batch(batch_id, workspace, T0, T0 + HOUR, requests)
    claimed = (await store.claim("b", [batch.seq], "w1", n, T0 + 30)).requests
    await store.record("w1", [_ok(c) for c in claimed], T0 + 1)


def _ok(request: ClaimedRequest) -> Outcome:
    return Outcome(request, RequestState.SUCCEEDED, succeeded_line(request.custom_id, {}))


# -- the outbox, in the store's transactions (both dialects) -------------------------------------


async def test_the_last_result_writes_the_ended_event_for_its_workspace_only(store: Store) -> None:
    webhooks = _service(store)
    mine, _ = await webhooks.create("team-a", "http://127.0.0.1:9/a", [])
    theirs, _ = await webhooks.create("team-b", "http://127.0.0.1:9/b", [])
    await _finish_batch(store, "team-a", "msgbatch_a")
    [delivery] = await store.webhooks.list_deliveries(mine.id, 10)
    assert (delivery.event_type, delivery.state) == ("message_batch.ended", DeliveryState.PENDING)
    assert await store.webhooks.list_deliveries(theirs.id, 10) == []
    [claimed] = await store.webhooks.claim("s1", 10, T0 + 2, T0 + 60)
    payload = json.loads(claimed.payload)
    assert payload["id"] == claimed.webhook_id == delivery.webhook_id
    assert payload["data"]["id"] == "msgbatch_a"
    assert payload["data"]["request_counts"]["succeeded"] == 2


async def test_cancel_and_expiry_write_their_events(store: Store) -> None:
    endpoint, _ = await _service(store).create("ws", "http://127.0.0.1:9/", [])
    queued = [NewRequest("r", "b", b"{}", RequestState.QUEUED)]
    await store.create_batch("msgbatch_c", "ws", T0, T0 + HOUR, queued)
    await store.create_batch("msgbatch_e", "ws", T0, T0 + 10, queued)
    await store.cancel_batch("ws", "msgbatch_c", T0 + 1)
    await store.sweep(T0 + 11)  # expires msgbatch_e, ends both
    events = [d.event_type for d in await store.webhooks.list_deliveries(endpoint.id, 10)]
    assert sorted(events) == [
        "message_batch.canceled",
        "message_batch.ended",
        "message_batch.ended",
        "message_batch.expired",
    ]


async def test_an_openai_batch_sends_one_openai_event_when_it_ends(store: Store) -> None:
    """No event when its cancel is accepted or its deadline passes: the end tells it."""
    endpoint, _ = await _service(store).create("ws", "http://127.0.0.1:9/", [])
    queued = [NewRequest("r", "b", b"{}", RequestState.QUEUED)]
    fields = msgspec.json.encode(BatchFields(OPENAI_CHAT, "file-in", "24h", "f-out", "f-err"))
    for batch_id, expires_at in [("batch_c", T0 + HOUR), ("batch_e", T0 + 10)]:
        await store.create_batch(
            batch_id, "ws", T0, expires_at, queued, dialect=OPENAI, dialect_fields=fields
        )
    await store.cancel_batch("ws", "batch_c", T0 + 1, OPENAI)
    assert await store.webhooks.list_deliveries(endpoint.id, 10) == []
    await store.sweep(T0 + 11)  # expires batch_e, ends both
    claimed = await store.webhooks.claim("s1", 10, T0 + 12, T0 + 60)
    events = {e["data"]["id"]: e for e in (json.loads(d.payload) for d in claimed)}
    assert {i: e["type"] for i, e in events.items()} == {
        "batch_c": "batch.cancelled",
        "batch_e": "batch.expired",
    }
    assert openai.types.Batch.model_validate(events["batch_e"]["data"]).status == "expired"


async def test_an_endpoint_gets_only_the_events_it_asked_for(store: Store) -> None:
    webhooks = _service(store)
    endpoint, _ = await webhooks.create("ws", "http://127.0.0.1:9/", ["message_batch.canceled"])
    await _finish_batch(store, "ws", "msgbatch_a")
    assert await store.webhooks.list_deliveries(endpoint.id, 10) == []
    with pytest.raises(InvalidRequest, match="unknown event type"):
        await webhooks.create("ws", "http://127.0.0.1:9/", ["batch.done"])


async def test_each_due_delivery_is_claimed_by_one_sender_until_its_lease_ends(
    store: Store,
) -> None:
    await _service(store).create("ws", "http://127.0.0.1:9/", [])
    for i in range(3):
        await _finish_batch(store, "ws", f"msgbatch_{i}")
    first = await store.webhooks.claim("s1", 2, T0 + 2, T0 + 60)
    second = await store.webhooks.claim("s2", 10, T0 + 2, T0 + 60)
    assert len(first) == 2
    assert len(second) == 1
    assert {d.id for d in first}.isdisjoint(d.id for d in second)
    assert await store.webhooks.claim("s3", 10, T0 + 59, T0 + 120) == []
    again = await store.webhooks.claim("s3", 10, T0 + 61, T0 + 120)  # the leases ran out
    assert len(again) == 3
    assert {d.attempt for d in again} == {2}


def test_private_receivers_are_refused_unless_allowed(tmp_path: Path) -> None:
    async def run() -> str:
        store = await open_store(f"sqlite:///{tmp_path}/p.db")
        try:
            service = WebhookService(store, lambda: T0, allow_private_urls=False)
            with pytest.raises(InvalidRequest, match="webhook_allow_private_urls") as refused:
                await service.create("ws", "http://10.0.0.5/hook", [])
            await service.create("ws", "https://hooks.example.com/x", [])
            return refused.value.message
        finally:
            await store.close()

    import asyncio

    assert "10.0.0.5" in asyncio.run(run())


# -- sending: signatures, retries on an injected clock --------------------------------------------


async def _ended_batch_for(
    store: Store, receiver: Receiver
) -> tuple[ManualClock, WebhookEndpoint, str, WebhookSender]:
    """An endpoint for the receiver, a batch whose end it is to hear of, and a sender on a
    clock that the test moves."""
    clock = ManualClock(T0 + 2)  # the batch ends at T0 + 1
    endpoint, secret = await _service(store, clock).create("ws", receiver.url, [])
    await _finish_batch(store, "ws", "msgbatch_a")
    settings = WebhookSettings(timeout_seconds=5, allow_private_urls=True)
    return clock, endpoint, secret, WebhookSender(store, settings, clock)


async def test_every_delivery_verifies_with_its_secret_and_not_with_another(
    store: Store, receiver: Receiver
) -> None:
    clock, endpoint, secret, sender = await _ended_batch_for(store, receiver)
    assert await sender.deliver_due() == 1
    await sender.close()
    [received] = receiver.wait_for(1)
    payload = received.verify(secret)
    assert payload["type"] == "message_batch.ended"
    assert received.headers["webhook-id"] == payload["id"]
    _, other = await _service(store, clock).create("ws", receiver.url, [])
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        received.verify(other)
    [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)


async def test_a_receiver_answering_500_gets_the_event_after_it_recovers(
    store: Store, receiver: Receiver
) -> None:
    clock, endpoint, secret, sender = await _ended_batch_for(store, receiver)
    receiver.status = 500
    waits = []
    for _ in range(3):
        assert await sender.deliver_due() == 1
        assert await sender.deliver_due() == 0  # not due again yet
        [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
        waits.append(delivery.next_attempt_at - clock())
        clock.advance(waits[-1])
    assert waits == [5.0, 10.0, 20.0]  # exponential backoff
    receiver.status = 200
    assert await sender.deliver_due() == 1
    await sender.close()
    received = receiver.wait_for(4)
    assert [r.status for r in received] == [500, 500, 500, 200]
    assert len({r.headers["webhook-id"] for r in received}) == 1
    assert all(r.verify(secret)["type"] == "message_batch.ended" for r in received)
    [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    assert (delivery.state, delivery.attempts) == ("delivered", 4)


async def test_an_endpoint_failing_for_a_day_is_disabled_and_says_why(
    store: Store, receiver: Receiver
) -> None:
    clock, endpoint, _, sender = await _ended_batch_for(store, receiver)
    receiver.status = 503
    attempts = await sender.deliver_due()
    [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    while delivery.state == "pending":
        clock.advance(delivery.next_attempt_at - clock())
        attempts += await sender.deliver_due()
        [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    await sender.close()
    found = await store.webhooks.get_endpoint(endpoint.id)
    assert found is not None
    assert found[0].disabled_at is not None
    assert "every delivery failed since" in (found[0].disabled_reason or "")
    assert "HTTP 503" in (found[0].disabled_reason or "")
    [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    assert delivery.state == "failed"
    assert attempts == delivery.attempts
    assert 23 * HOUR <= clock() - T0 <= 24 * HOUR + 2  # the last try within the day


# -- end to end: a real server, its engine and HTTP routes ----------------------------------------


def _post(client: anthropic.Anthropic, path: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(path, body=body, cast_to=object)


def _get(client: anthropic.Anthropic, path: str) -> Any:
    return client.get(path, cast_to=object)


def test_a_server_signs_and_delivers_each_workspace_its_own_events(
    start_server: StartServer, receiver: Receiver, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"a": "team-a", "b": "team-b"})
    server = start_server(webhook_allow_private_urls=True)
    with (
        anthropic.Anthropic(base_url=server.url, api_key=keys["a"]) as a,
        anthropic.Anthropic(base_url=server.url, api_key=keys["b"]) as b,
    ):
        created = _post(a, "/v1/webhooks", {"url": receiver.url})
        assert created["secret"].startswith("whsec_")
        assert created["events"] == list(EVENT_TYPES) == list(get_args(EventType))  # all
        listed = _get(a, "/v1/webhooks")
        assert [e["id"] for e in listed["data"]] == [created["id"]]
        assert "secret" not in json.dumps(listed) or listed["data"][0]["secret"] is None
        assert _get(b, "/v1/webhooks")["data"] == []
        with pytest.raises(anthropic.NotFoundError):
            _get(b, f"/v1/webhooks/{created['id']}/deliveries")
        theirs = b.messages.batches.create(requests=[mock_request("x")])
        wait_ended(b, theirs.id)
        mine = a.messages.batches.create(requests=[mock_request("y"), mock_request("z")])
        wait_ended(a, mine.id)
        [received] = receiver.wait_for(1)
        payload = received.verify(created["secret"])
        assert payload["data"]["id"] == mine.id
        assert payload["data"]["request_counts"]["succeeded"] == 2
        _post(a, f"/v1/webhooks/{created['id']}/test")
        assert receiver.wait_for(2)[1].verify(created["secret"])["type"] == "webhook.test"
        deliveries = _get(a, f"/v1/webhooks/{created['id']}/deliveries")["data"]
        assert [d["event_type"] for d in deliveries] == ["webhook.test", "message_batch.ended"]
    assert all(r.verify(created["secret"])["data"] for r in receiver.received)


def test_a_loopback_receiver_is_refused_by_default(start_server: StartServer) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        with pytest.raises(anthropic.BadRequestError, match="webhook_allow_private_urls"):
            _post(client, "/v1/webhooks", {"url": "http://127.0.0.1:9/hook"})
        with pytest.raises(anthropic.BadRequestError, match="url"):
            _post(client, "/v1/webhooks", {"events": []})


def test_kill_9_between_the_end_and_the_delivery_then_a_restart_delivers_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The receiver holds the first attempt unanswered; the server is killed meanwhile. The
    restarted server sends the same event again, with the same webhook-id, once the dead
    attempt's lease has run out (the 3 s timeout and 5 s more)."""
    env = {"BATCHD_WEBHOOK_ALLOW_PRIVATE_URLS": "true", "BATCHD_WEBHOOK_TIMEOUT_SECONDS": "3"}
    receiver.hold()
    with run_batchd(tmp_path, env=env) as first:
        with anthropic.Anthropic(base_url=first.url, api_key="k", max_retries=0) as client:
            endpoint = _post(client, "/v1/webhooks", {"url": receiver.url})
            batch = client.messages.batches.create(requests=[mock_request("a")])
            [held] = receiver.wait_for(1, "the first attempt")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
    receiver.release()  # its answer goes to a dead connection
    with run_batchd(tmp_path, env=env) as second:
        received = receiver.wait_for(2, "the attempt after the restart")
        with anthropic.Anthropic(base_url=second.url, api_key="k", max_retries=0) as client:
            path = f"/v1/webhooks/{endpoint['id']}/deliveries"
            wait_until(
                lambda: _get(client, path)["data"][0]["state"] == "delivered",
                "the delivery recorded as delivered",
            )
            [delivery] = _get(client, path)["data"]
            ended = client.messages.batches.retrieve(batch.id)
    assert (held.status, received[1].status) == (0, 200)
    assert received[1].headers["webhook-id"] == held.headers["webhook-id"]
    assert delivery["webhook_id"] == held.headers["webhook-id"]
    assert delivery["attempts"] == 2
    payload = received[1].verify(endpoint["secret"])
    assert payload == held.verify(endpoint["secret"])
    assert payload["data"]["id"] == batch.id
    assert ended.processing_status == "ended"


async def test_a_reused_answer_is_a_result_counted_in_usage_and_ends_the_batch(
    store: Store,
) -> None:
    """One record writes both extensions' figures: the results mark (partial results), the
    usage of a fresh and a reused answer alike, the reused count and the ended event."""
    endpoint, _ = await _service(store).create("ws", "http://127.0.0.1:9/", [])
    requests = [NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED) for i in range(2)]
    batch = await store.create_batch("msgbatch_r", "ws", T0, T0 + HOUR, requests)
    fresh, again = (await store.claim("b", [batch.seq], "w1", 2, T0 + 30)).requests
    message = {"id": "m", "usage": {"input_tokens": 7, "output_tokens": 5}}
    tokens = TokenUsage(7, 5, 0)
    outcomes = [
        Outcome(
            request,
            RequestState.SUCCEEDED,
            succeeded_line(request.custom_id, message),
            model="claude-x",
            usage=tokens,
            answer_key="k" * 32 if request is fresh else None,
            reused=request is again,
        )
        for request in (fresh, again)
    ]
    assert (await store.record("w1", outcomes, T0 + 1)).ended == 1
    mark = await store.results_mark(batch.seq)
    recorded = [r[1] async for page in store.iter_recorded(batch.seq, -1, mark, 10) for r in page]
    assert recorded == ["r0", "r1"]
    [model] = await store.batch_usage(batch.seq)
    assert (model.model, model.requests, model.tokens) == ("claude-x", 2, tokens + tokens)
    [day] = await store.daily_usage("ws", "2000-01-01")
    assert (day.requests["succeeded"], day.tokens) == (2, tokens + tokens)
    ended = await store.get_batch("ws", "msgbatch_r")
    assert ended is not None
    assert (ended.reused, ended.counts.succeeded) == (1, 2)
    [delivery] = await store.webhooks.list_deliveries(endpoint.id, 10)
    assert delivery.event_type == "message_batch.ended"
