"""Retrying what failed (batchd's own): ``POST /v1/messages/batches/{id}/retry`` makes a new
batch of an ended batch's errored and expired requests (or the result types named), answered
as a create, and records which batch it retries."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types.messages import MessageBatch

from tests.conftest import StartServer, body_of, mock_request, wait_ended
from tests.support.upstream import Fault, invalid_request, serve_upstream, upstream_backend

FAILING = {"r2", "r5", "r7"}


def _fails_once(key: str, attempt: int) -> Fault | None:
    """The first call of each chosen request is a 400 (not retried by the engine)."""
    return invalid_request("chosen to fail") if key in FAILING and attempt == 1 else None


def _retry(client: anthropic.Anthropic, batch_id: str, **body: Any) -> MessageBatch:
    """A retry as a user of the SDK writes it: a POST parsed as a MessageBatch."""
    return client.post(
        f"/v1/messages/batches/{batch_id}/retry", cast_to=MessageBatch, body=body or None
    )


def test_a_retry_holds_exactly_the_failed_requests_and_links_back(
    start_server: StartServer,
) -> None:
    with serve_upstream(faults=_fails_once) as upstream:
        server = start_server(backends=[upstream_backend(upstream)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            requests = [mock_request(f"r{i}", f"r{i}", model="claude-1") for i in range(10)]
            first = client.messages.batches.create(requests=requests)
            assert wait_ended(client, first.id).request_counts.errored == 3
            retry = _retry(client, first.id)
            assert retry.processing_status == "in_progress"
            assert retry.request_counts.processing == 3
            ended = wait_ended(client, retry.id)
            results = {
                r.custom_id: r.result.type for r in client.messages.batches.results(retry.id)
            }
            details = client.get(f"/v1/messages/batches/{retry.id}/details", cast_to=object)
            original = client.get(f"/v1/messages/batches/{first.id}/details", cast_to=object)
    assert ended.request_counts.succeeded == 3
    assert results == dict.fromkeys(FAILING, "succeeded")
    assert details == {"id": retry.id, "retry_of": first.id, "retried_by": [], "reused_answers": 0}
    assert isinstance(original, dict)
    assert original["retried_by"] == [retry.id]


def test_a_retry_may_name_canceled_requests(start_server: StartServer) -> None:
    server = start_server(backends=[{"name": "mock", "kind": "mock", "models": ["mock"],
                                     "latency_ms": 2000, "max_concurrency": 1}])  # fmt: skip
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(4)])
        client.messages.batches.cancel(batch.id)
        canceled = wait_ended(client, batch.id).request_counts.canceled
        retry = _retry(client, batch.id, result_types=["canceled"])
    assert canceled >= 3
    assert retry.request_counts.processing == canceled


def test_a_retry_of_a_running_batch_is_refused_and_creates_nothing(
    start_server: StartServer,
) -> None:
    server = start_server(backends=[{"name": "mock", "kind": "mock", "models": ["mock"],
                                     "latency_ms": 5000}])  # fmt: skip
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        with pytest.raises(anthropic.BadRequestError) as refused:
            _retry(client, batch.id)
        assert len(client.messages.batches.list().data) == 1
        client.messages.batches.cancel(batch.id)
    assert body_of(refused.value)["error"]["type"] == "invalid_request_error"
    assert "has not ended yet" in body_of(refused.value)["error"]["message"]


def test_a_retry_with_nothing_to_retry_is_refused_and_creates_nothing(
    start_server: StartServer,
) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        wait_ended(client, batch.id)
        with pytest.raises(anthropic.BadRequestError) as refused:
            _retry(client, batch.id)
        assert len(client.messages.batches.list().data) == 1
    message = body_of(refused.value)["error"]["message"]
    assert "no request whose result is 'errored' or 'expired'" in message


@pytest.mark.parametrize(
    "body",
    [
        b'{"result_types": ["succeeded"]}',  # only what did not succeed may be retried
        b'{"result_types": []}',  # none named
        b'{"types": ["errored"]}',  # an unknown key
        b"[",  # not JSON
    ],
)
def test_a_bad_retry_body_is_a_400(start_server: StartServer, body: bytes) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        wait_ended(client, batch.id)
    with httpx.Client(base_url=server.url) as http:
        response = http.post(
            f"/v1/messages/batches/{batch.id}/retry",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_retry_keeps_the_priority_and_completion_window_of_the_batch_it_retries(
    start_server: StartServer,
) -> None:
    schedule_headers = {"batchd-priority": "high", "batchd-completion-window": "2h"}
    with serve_upstream(faults=_fails_once) as upstream:
        server = start_server(backends=[upstream_backend(upstream)])
        with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
            requests = [mock_request(f"r{i}", f"r{i}", model="claude-1") for i in range(8)]
            first = client.messages.batches.create(
                requests=requests, extra_headers=schedule_headers
            )
            wait_ended(client, first.id)
            retry = _retry(client, first.id)
            wait_ended(client, retry.id)
            schedule = client.get(f"/v1/messages/batches/{retry.id}/schedule", cast_to=object)
    assert isinstance(schedule, dict)
    assert (schedule["priority"], schedule["completion_window"]) == ("high", "2h")
    assert (retry.expires_at - retry.created_at).total_seconds() == 2 * 3600


def test_an_idempotency_key_sent_again_with_another_priority_is_refused(
    start_server: StartServer,
) -> None:
    server = start_server()
    key = {"Idempotency-Key": "lanes-and-keys"}
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        requests = [mock_request("a")]
        first = client.messages.batches.create(requests=requests, extra_headers=key)
        again = client.messages.batches.create(requests=requests, extra_headers=key)
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.batches.create(
                requests=requests, extra_headers=key | {"batchd-priority": "high"}
            )
        listed = client.messages.batches.list().data
    assert again.id == first.id
    assert [b.id for b in listed] == [first.id]
    assert "Idempotency-Key" in body_of(refused.value)["error"]["message"]
