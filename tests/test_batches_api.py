"""The Batch Processing Guide's workflows, driven through the real SDK over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anthropic
import pypdf
import pytest
from anthropic.types import Message, TextBlock, ToolUseBlock
from anthropic.types.messages import (
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchCanceledResult,
    MessageBatchErroredResult,
    MessageBatchIndividualResponse,
    MessageBatchSucceededResult,
)

from batchd.store import open_store
from batchd.usecases.keys import create_key
from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.server import RunningServer

SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 2,
    "latency_ms": 200,
}


def slow_request(custom_id: str) -> dict[str, Any]:
    return mock_request(custom_id, model="slow-1")


@pytest.fixture
def slow_client(start_server: StartServer) -> Iterator[anthropic.Anthropic]:
    """A client on a server whose `slow-*` models answer two at a time, 200 ms each."""
    running = start_server(backends=[SLOW_BACKEND])
    with anthropic.Anthropic(
        base_url=running.url, api_key="sk-test", _strict_response_validation=True
    ) as c:
        yield c


def results_by_id(
    client: anthropic.Anthropic, batch_id: str
) -> dict[str, MessageBatchIndividualResponse]:
    return {r.custom_id: r for r in client.messages.batches.results(batch_id)}


def total(batch: MessageBatch) -> int:
    c = batch.request_counts
    return c.processing + c.succeeded + c.errored + c.canceled + c.expired


def create_batches(client: anthropic.Anthropic, n: int) -> list[str]:
    """Create ``n`` one-request batches; return their ids, oldest first."""
    return [client.messages.batches.create(requests=[mock_request("r")]).id for _ in range(n)]


# --- create, retrieve, poll, results -----------------------------------------------------


def test_create_returns_a_fresh_in_progress_batch(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request("a"), mock_request("b")])

    assert isinstance(batch, MessageBatch)
    assert batch.id.startswith("msgbatch_")
    assert batch.type == "message_batch"
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 2
    assert total(batch) == 2
    assert (batch.ended_at, batch.cancel_initiated_at, batch.results_url) == (None, None, None)
    assert batch.expires_at - batch.created_at == timedelta(hours=24)


def test_retrieve_returns_the_created_batch(client: anthropic.Anthropic) -> None:
    created = client.messages.batches.create(requests=[mock_request("a")])

    retrieved = client.messages.batches.retrieve(created.id)

    assert isinstance(retrieved, MessageBatch)
    assert retrieved.id == created.id
    assert retrieved.created_at == created.created_at


def test_polling_sees_the_batch_end(server: RunningServer, client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(3)])

    ended = wait_ended(client, batch.id)

    assert ended.request_counts.succeeded == 3
    assert ended.request_counts.processing == 0
    assert ended.ended_at is not None
    assert ended.ended_at >= ended.created_at
    assert ended.results_url == f"{server.url}/v1/messages/batches/{batch.id}/results"


def test_results_iterate_one_line_per_request(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(3)])
    wait_ended(client, batch.id)

    results = list(client.messages.batches.results(batch.id))

    assert all(isinstance(r, MessageBatchIndividualResponse) for r in results)
    assert sorted(r.custom_id for r in results) == ["r0", "r1", "r2"]
    assert {r.result.type for r in results} == {"succeeded"}


def test_results_looked_up_by_custom_id(client: anthropic.Anthropic) -> None:
    requests = [mock_request("first", "alpha"), mock_request("second", "bravo charlie")]
    batch = client.messages.batches.create(requests=requests)
    wait_ended(client, batch.id)

    result = results_by_id(client, batch.id)["second"].result

    assert isinstance(result, MessageBatchSucceededResult)
    assert isinstance(result.message, Message)
    assert result.message.model == "mock"
    assert result.message.content == [TextBlock(type="text", text="Mock reply: bravo charlie")]


def test_a_batch_of_5000_requests_succeeds_once_each(client: anthropic.Anthropic) -> None:
    custom_ids = [f"req-{i:05d}" for i in range(5000)]
    batch = client.messages.batches.create(requests=[mock_request(c) for c in custom_ids])

    ended = wait_ended(client, batch.id)
    seen = Counter(
        r.custom_id
        for r in client.messages.batches.results(batch.id)
        if r.result.type == "succeeded"
    )

    assert ended.request_counts.succeeded == 5000
    assert seen == Counter(custom_ids)


# --- cancel and delete -------------------------------------------------------------------


def test_cancel_starts_canceling(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(20)])

    canceling = slow_client.messages.batches.cancel(batch.id)

    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.ended_at is None
    assert total(canceling) == 20


def test_canceled_batch_ends_with_canceled_results(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(20)])
    slow_client.messages.batches.cancel(batch.id)

    ended = wait_ended(slow_client, batch.id)
    kinds = Counter(r.result.type for r in slow_client.messages.batches.results(batch.id))

    assert ended.processing_status == "ended"
    assert ended.cancel_initiated_at is not None
    assert ended.request_counts.canceled > 0
    assert total(ended) == 20
    assert kinds["canceled"] == ended.request_counts.canceled
    assert kinds["succeeded"] == ended.request_counts.succeeded
    assert kinds.total() == 20


def test_canceled_result_has_the_canceled_type(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(20)])
    slow_client.messages.batches.cancel(batch.id)
    wait_ended(slow_client, batch.id)

    # The last request cannot have started: two run at a time, 200 ms each.
    result = results_by_id(slow_client, batch.id)["r19"].result

    assert isinstance(result, MessageBatchCanceledResult)
    assert result.type == "canceled"


def test_a_second_cancel_changes_nothing(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(20)])
    first = slow_client.messages.batches.cancel(batch.id)

    second = slow_client.messages.batches.cancel(batch.id)

    assert second.processing_status == "canceling"
    assert second.cancel_initiated_at == first.cancel_initiated_at


def test_cancel_of_an_ended_batch_is_invalid(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request("a")])
    wait_ended(client, batch.id)

    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.cancel(batch.id)

    assert caught.value.status_code == 400
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_delete_is_refused_before_the_batch_ends(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(20)])

    with pytest.raises(anthropic.BadRequestError) as caught:
        slow_client.messages.batches.delete(batch.id)

    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert slow_client.messages.batches.retrieve(batch.id).id == batch.id


def test_delete_after_end_then_retrieve_is_not_found(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request("a")])
    wait_ended(client, batch.id)

    deleted = client.messages.batches.delete(batch.id)

    assert isinstance(deleted, DeletedMessageBatch)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


# --- list and pagination -----------------------------------------------------------------


def test_list_auto_paginates_newest_first(client: anthropic.Anthropic) -> None:
    ids = create_batches(client, 5)

    listed = [b.id for b in client.messages.batches.list(limit=2)]

    assert listed == ids[::-1]


def test_list_pages_forward_with_after_id(client: anthropic.Anthropic) -> None:
    ids = create_batches(client, 5)[::-1]  # newest first

    first = client.messages.batches.list(limit=2)
    second = client.messages.batches.list(limit=2, after_id=first.last_id)
    last = second.get_next_page()

    assert ([b.id for b in first.data], first.has_more) == (ids[0:2], True)
    assert (first.first_id, first.last_id) == (ids[0], ids[1])
    assert ([b.id for b in second.data], second.has_more) == (ids[2:4], True)
    assert ([b.id for b in last.data], last.has_more) == (ids[4:], False)
    assert not last.has_next_page()


def test_list_pages_backward_with_before_id(client: anthropic.Anthropic) -> None:
    ids = create_batches(client, 5)[::-1]  # newest first

    page = client.messages.batches.list(limit=2, before_id=ids[3])

    assert [b.id for b in page.data] == ids[1:3]
    assert (page.first_id, page.last_id, page.has_more) == (ids[1], ids[2], True)
    assert [b.id for b in page.get_next_page().data] == ids[0:1]


def test_list_of_no_batches_is_empty(client: anthropic.Anthropic) -> None:
    page = client.messages.batches.list()

    assert (page.data, page.has_more, page.first_id, page.last_id) == ([], False, None, None)


# --- what a request may hold -------------------------------------------------------------


def test_a_tool_choice_gives_a_tool_use_block(client: anthropic.Anthropic) -> None:
    tools = [
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}},
    ]
    choice = {"type": "tool", "name": "get_weather"}
    batch = client.messages.batches.create(
        requests=[mock_request("t", "weather?", tools=tools, tool_choice=choice)]
    )
    wait_ended(client, batch.id)

    result = results_by_id(client, batch.id)["t"].result

    assert isinstance(result, MessageBatchSucceededResult)
    assert result.message.stop_reason == "tool_use"
    block = result.message.content[0]
    assert isinstance(block, ToolUseBlock)
    assert block.name == "get_weather"


def one_page_pdf() -> str:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=612, height=792)
    buffer = io.BytesIO()
    writer.write(buffer)
    return base64.standard_b64encode(buffer.getvalue()).decode()


def test_a_pdf_document_block_is_processed(client: anthropic.Anthropic) -> None:
    source = {"type": "base64", "media_type": "application/pdf", "data": one_page_pdf()}
    content = [
        {"type": "document", "source": source},
        {"type": "text", "text": "Summarise this"},
    ]
    batch = client.messages.batches.create(requests=[mock_request("pdf", content)])
    wait_ended(client, batch.id)

    result = results_by_id(client, batch.id)["pdf"].result

    assert isinstance(result, MessageBatchSucceededResult)
    assert result.message.content == [TextBlock(type="text", text="Mock reply: Summarise this")]


def test_unknown_params_keys_are_accepted(client: anthropic.Anthropic) -> None:
    extra = mock_request("x", temperature=0.5, top_k=5, top_p=0.9, future_option={"a": 1})
    batch = client.messages.batches.create(requests=[extra])

    ended = wait_ended(client, batch.id)

    assert ended.request_counts.succeeded == 1
    assert results_by_id(client, batch.id)["x"].result.type == "succeeded"


def _without(key: str) -> dict[str, Any]:
    request = mock_request("bad")
    del request["params"][key]
    return request


@pytest.mark.parametrize(
    ("bad", "error_type"),
    [
        # max_tokens is required
        (_without("max_tokens"), "invalid_request_error"),
        # streaming is not supported inside a batch
        (mock_request("bad", stream=True), "invalid_request_error"),
        # messages must be a list
        (mock_request("bad", messages="hello"), "invalid_request_error"),
        # max_tokens must be an integer
        (mock_request("bad", max_tokens="many"), "invalid_request_error"),
        # no backend serves this model
        (mock_request("bad", model="no-such-model"), "not_found_error"),
    ],
)
def test_a_bad_request_errors_alone(
    client: anthropic.Anthropic, bad: dict[str, Any], error_type: str
) -> None:
    requests = [mock_request("before"), bad, mock_request("after")]
    batch = client.messages.batches.create(requests=requests)

    ended = wait_ended(client, batch.id)
    results = results_by_id(client, batch.id)

    bad_result = results["bad"].result
    assert isinstance(bad_result, MessageBatchErroredResult)
    assert bad_result.error.type == "error"
    assert bad_result.error.error.type == error_type
    assert results["before"].result.type == results["after"].result.type == "succeeded"
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (2, 1)


# --- the async client --------------------------------------------------------------------


def test_async_client_creates_polls_and_reads_results(server: RunningServer) -> None:
    async def scenario() -> tuple[MessageBatch, list[MessageBatchIndividualResponse]]:
        async with anthropic.AsyncAnthropic(
            base_url=server.url, api_key="sk-test", _strict_response_validation=True
        ) as client:
            batch = await client.messages.batches.create(
                requests=[mock_request("a", "one"), mock_request("b", "two")]
            )
            while batch.processing_status != "ended":
                await asyncio.sleep(0.05)
                batch = await client.messages.batches.retrieve(batch.id)
            decoder = await client.messages.batches.results(batch.id)
            return batch, [r async for r in decoder]

    batch, results = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

    assert batch.request_counts.succeeded == 2
    texts = {r.custom_id: r.result.message.content[0].text for r in results}
    assert texts == {"a": "Mock reply: one", "b": "Mock reply: two"}


def test_async_list_auto_paginates(server: RunningServer, client: anthropic.Anthropic) -> None:
    ids = create_batches(client, 5)

    async def scenario() -> tuple[list[str], list[str]]:
        async with anthropic.AsyncAnthropic(
            base_url=server.url, api_key="sk-test", _strict_response_validation=True
        ) as client:
            first_page = await client.messages.batches.list(limit=2)
            every = [b.id async for b in client.messages.batches.list(limit=2)]
            return [b.id for b in first_page.data], every

    first_page, every = asyncio.run(scenario())

    assert first_page == ids[::-1][:2]
    assert every == ids[::-1]


# --- progress ----------------------------------------------------------------------------


def test_live_counts_show_progress(slow_client: anthropic.Anthropic) -> None:
    batch = slow_client.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(8)])
    seen: list[MessageBatch] = []
    deadline = time.monotonic() + 30
    while not seen or seen[-1].processing_status != "ended":
        assert time.monotonic() < deadline
        seen.append(slow_client.messages.batches.retrieve(batch.id))
        time.sleep(0.05)

    assert all(total(b) == 8 for b in seen)
    midway = [b.request_counts.succeeded for b in seen if b.processing_status == "in_progress"]
    assert any(0 < n < 8 for n in midway)
    assert midway == sorted(midway)
    assert seen[-1].request_counts.succeeded == 8


# --- strict parsing, request ids, headers ------------------------------------------------


@pytest.fixture
def strict_client(server: RunningServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.url, api_key="sk-test", _strict_response_validation=True
    ) as c:
        yield c


def test_strict_client_parses_create_retrieve_and_list(strict_client: anthropic.Anthropic) -> None:
    created = strict_client.messages.batches.create(requests=[mock_request("a")])

    ended = wait_ended(strict_client, created.id)
    listed = strict_client.messages.batches.list(limit=1)

    assert ended.id == created.id
    assert [b.id for b in listed.data] == [created.id]


def test_strict_client_parses_results_and_delete(strict_client: anthropic.Anthropic) -> None:
    batch = strict_client.messages.batches.create(requests=[mock_request("a")])
    wait_ended(strict_client, batch.id)

    results = list(strict_client.messages.batches.results(batch.id))
    deleted = strict_client.messages.batches.delete(batch.id)

    assert [r.result.type for r in results] == ["succeeded"]
    assert deleted.type == "message_batch_deleted"


def test_strict_client_parses_cancel(start_server: StartServer) -> None:
    running = start_server(backends=[SLOW_BACKEND])
    with anthropic.Anthropic(
        base_url=running.url, api_key="sk-test", _strict_response_validation=True
    ) as strict:
        batch = strict.messages.batches.create(requests=[slow_request(f"r{i}") for i in range(6)])

        canceling = strict.messages.batches.cancel(batch.id)
        ended = wait_ended(strict, batch.id)

    assert canceling.processing_status == "canceling"
    assert ended.request_counts.canceled > 0


def test_request_id_header_on_success(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request("a")])

    raw = client.messages.batches.with_raw_response.retrieve(batch.id)

    assert raw.headers["request-id"].startswith("req_")
    assert raw.parse()._request_id == raw.headers["request-id"]


def test_request_id_on_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.batches.retrieve("msgbatch_does_not_exist")

    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_")
    assert caught.value.body["request_id"] == caught.value.request_id


def test_old_sdk_x_api_key_and_beta_markers_are_accepted(server: RunningServer) -> None:
    old_style = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    with anthropic.Anthropic(
        base_url=server.url, api_key=None, auth_token=None, default_headers=old_style
    ) as old:
        beta = {
            "extra_query": {"beta": "true"},
            "extra_headers": {"anthropic-beta": "message-batches-2024-09-24"},
        }
        batch = old.messages.batches.create(requests=[mock_request("a")], **beta)
        retrieved = old.messages.batches.retrieve(batch.id, **beta)
        listed = old.messages.batches.list(**beta)
        wait_ended(old, batch.id)
        deleted = old.messages.batches.delete(batch.id, **beta)

    assert retrieved.id == batch.id
    assert [b.id for b in listed.data] == [batch.id]
    assert deleted.id == batch.id


def mint_key(db_path: Path) -> str:
    """Store an API key in the database a server will open; return the key."""

    async def mint() -> str:
        store = await open_store(f"sqlite:///{db_path}")
        try:
            return (await create_key(store, "test", "default"))[1]
        finally:
            await store.close()

    return asyncio.run(mint())


def test_old_sdk_x_api_key_is_checked(start_server: StartServer, tmp_path: Path) -> None:
    key = mint_key(tmp_path / "batchd.db")
    running = start_server()

    def old_client(presented: str) -> anthropic.Anthropic:
        headers = {"x-api-key": presented, "anthropic-version": "2023-06-01"}
        return anthropic.Anthropic(
            base_url=running.url, api_key=None, auth_token=None, default_headers=headers
        )

    with old_client(key) as good, old_client("sk-wrong") as bad:
        page = good.messages.batches.list()
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.batches.list()

    assert page.data == []
    assert caught.value.body["error"]["type"] == "authentication_error"


# --- the Messages API and models ---------------------------------------------------------


def test_messages_create_on_mock(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="mock", max_tokens=16, messages=[{"role": "user", "content": "ping pong"}]
    )

    assert isinstance(message, Message)
    assert message.content == [TextBlock(type="text", text="Mock reply: ping pong")]
    assert message.stop_reason == "end_turn"


def test_messages_create_with_an_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(
            model="no-such-model", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )

    assert caught.value.body["error"]["type"] == "not_found_error"


def test_messages_stream_on_mock(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="mock", max_tokens=16, messages=[{"role": "user", "content": "stream me"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()

    assert text == "Mock reply: stream me"
    assert len(final.content) == 1
    assert isinstance(final.content[0], TextBlock)
    assert final.content[0].text == "Mock reply: stream me"
    assert final.stop_reason == "end_turn"


def test_models_list_names_the_mock_model(client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list()]

    assert "mock" in ids
