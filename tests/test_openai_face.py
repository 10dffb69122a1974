"""The OpenAI Files + Batches face, driven through the official `openai` SDK over real HTTP.

Every answer is parsed by the SDK in strict mode, and every line of an output or error file
with the SDK's own types (``BatchRequestOutput`` is gone from the SDK: its body types are
checked instead, ``ChatCompletion`` and ``CreateEmbeddingResponse``).
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import anthropic
import httpx2 as httpx
import openai
import pytest
import standardwebhooks
from openai.types import Batch, CreateEmbeddingResponse, FileDeleted, FileObject
from openai.types.chat import ChatCompletion

from tests.conftest import StartServer, mock_request, wait_until
from tests.support.clock import ManualClock
from tests.support.invariants import pg_count_mismatches
from tests.support.keys import make_keys
from tests.support.postgres import PostgresServer
from tests.support.receiver import serve_receiver
from tests.support.server import RunningServer, make_settings, serve_batchd
from tests.support.upstream import FakeUpstream

Endpoint = Literal["/v1/chat/completions", "/v1/embeddings"]
CHAT: Endpoint = "/v1/chat/completions"
EMBEDDINGS: Endpoint = "/v1/embeddings"
SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 1,
    "adaptive_concurrency": False,
    "latency_ms": 100,
}


def sdk(server: RunningServer, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=key, max_retries=0, _strict_response_validation=True
    )


@pytest.fixture
def oai(start_server: StartServer) -> Iterator[openai.OpenAI]:
    with sdk(start_server(backends=[SLOW_BACKEND])) as client:
        yield client


def chat_line(
    custom_id: str, text: str = "hello", model: str = "mock", **body: Any
) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": model, "messages": messages, "max_tokens": 16} | body,
    }


def embedding_line(custom_id: str, text: str = "hello") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": EMBEDDINGS,
        "body": {"model": "mock", "input": text},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | bytes) -> FileObject:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")


def run_batch(
    client: openai.OpenAI, lines: list[dict[str, Any]] | bytes, endpoint: Endpoint = CHAT
) -> Batch:
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,
        completion_window="24h",
    )
    return wait_done(client, batch.id)


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Batch:
    """Poll a batch until it is in a final status, as a user would."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status}")
        time.sleep(0.05)


def lines_of(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """An output or error file's lines by custom_id (each custom_id once)."""
    if file_id is None:
        return {}
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id twice"
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
    return by_id


# --- the happy path ----------------------------------------------------------------------


def test_upload_answers_a_file_object(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line("a"), chat_line("b")])

    assert isinstance(file, FileObject)
    assert file.id.startswith("file-")
    assert (file.purpose, file.filename, file.status) == ("batch", "input.jsonl", "processed")
    assert file.bytes == len(jsonl([chat_line("a"), chat_line("b")]))
    assert oai.files.retrieve(file.id) == file
    assert oai.files.content(file.id).content == jsonl([chat_line("a"), chat_line("b")])


def test_chat_batch_completes_with_one_output_line_per_request(oai: openai.OpenAI) -> None:
    batch = run_batch(oai, [chat_line(f"r{i}", f"hello {i}") for i in range(5)])

    assert batch.status == "completed"
    assert batch.id.startswith("batch_")
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (5, 5)
    assert batch.request_counts.failed == 0
    assert batch.in_progress_at
    assert batch.finalizing_at
    assert batch.completed_at
    assert batch.error_file_id is None
    assert batch.model == "mock"
    output = lines_of(oai, batch.output_file_id)
    assert sorted(output) == [f"r{i}" for i in range(5)]
    for custom_id, line in output.items():
        assert line["response"]["status_code"] == 200
        assert line["error"] is None
        completion = ChatCompletion.model_validate(line["response"]["body"], strict=False)
        assert completion.choices[0].message.content == f"Mock reply: hello {custom_id[1:]}"


def test_embeddings_batch_completes(oai: openai.OpenAI) -> None:
    batch = run_batch(oai, [embedding_line(f"e{i}", f"text {i}") for i in range(3)], EMBEDDINGS)

    assert batch.status == "completed"
    for line in lines_of(oai, batch.output_file_id).values():
        body = CreateEmbeddingResponse.model_validate(line["response"]["body"])
        assert len(body.data) == 1
        assert body.data[0].embedding


def test_a_batchs_results_count_into_usage(oai: openai.OpenAI) -> None:
    """Usage (batchd's own) counts an OpenAI batch's answers: prompt_tokens as input,
    completion_tokens as output, as the output lines report them."""
    batch = run_batch(oai, [chat_line(f"u{i}", "many words " * i) for i in range(1, 4)])

    output = lines_of(oai, batch.output_file_id)
    reported = [line["response"]["body"]["usage"] for line in output.values()]
    usage: Any = oai.get(f"/messages/batches/{batch.id}/usage", cast_to=object)
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        sum(u["prompt_tokens"] for u in reported),
        sum(u["completion_tokens"] for u in reported),
    )
    assert usage["input_tokens"] > 0
    assert usage["request_counts"]["succeeded"] == 3
    daily: Any = oai.get("/usage", cast_to=object)
    [day] = daily["data"]
    assert (day["model"], day["requests"]["succeeded"]) == ("mock", 3)


def test_a_refused_request_is_a_line_of_the_error_file(oai: openai.OpenAI) -> None:
    refused = chat_line("bad") | {"body": {"model": "mock", "messages": "not a list"}}
    batch = run_batch(oai, [chat_line("ok"), refused])

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert list(lines_of(oai, batch.output_file_id)) == ["ok"]
    [line] = lines_of(oai, batch.error_file_id).values()
    assert line["custom_id"] == "bad"
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}


def test_output_and_error_files_are_files(oai: openai.OpenAI) -> None:
    refused = chat_line("bad") | {"body": {"model": "mock", "messages": "not a list"}}
    batch = run_batch(oai, [chat_line("ok"), refused])
    assert batch.output_file_id is not None
    assert batch.error_file_id is not None

    output = oai.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert output.bytes == len(oai.files.content(output.id).content)
    listed = {f.id for f in oai.files.list(purpose="batch_output")}
    assert listed == {batch.output_file_id, batch.error_file_id}


def test_metadata_and_batch_list_with_auto_pagination(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line("a")])
    created = [
        oai.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"n": str(i)},
        )
        for i in range(5)
    ]

    listed = list(oai.batches.list(limit=2))
    assert [b.id for b in listed] == [b.id for b in reversed(created)]
    assert [b.metadata for b in listed] == [{"n": str(i)} for i in reversed(range(5))]
    page = oai.batches.list(limit=2)
    assert page.has_more
    assert len(page.data) == 2


def test_file_list_pages_in_either_order(oai: openai.OpenAI) -> None:
    ids = [upload(oai, [chat_line(str(i))]).id for i in range(5)]

    assert [f.id for f in oai.files.list(limit=2)] == ids[::-1]
    assert [f.id for f in oai.files.list(limit=2, order="asc")] == ids
    page = oai.files.list(limit=3, order="asc", after=ids[0])
    assert [f.id for f in page.data] == ids[1:4]
    assert page.has_more


def test_a_deleted_file_is_gone(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line("a")])

    deleted = oai.files.delete(file.id)
    assert isinstance(deleted, FileDeleted)
    assert (deleted.id, deleted.deleted) == (file.id, True)
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        oai.files.delete(file.id)
    assert file.id not in {f.id for f in oai.files.list()}


# --- cancel ------------------------------------------------------------------------------


def test_cancel_of_a_running_batch_keeps_the_finished_lines(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line(f"r{i}", model="slow-1") for i in range(40)])
    batch = oai.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    while oai.batches.retrieve(batch.id).request_counts.completed < 2:  # type: ignore[union-attr]
        time.sleep(0.02)

    cancelling = oai.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    done = wait_done(oai, batch.id)

    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    output, errors = lines_of(oai, done.output_file_id), lines_of(oai, done.error_file_id)
    assert len(output) >= 2
    assert sorted(output | errors) == sorted(f"r{i}" for i in range(40))
    assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}


def test_the_lines_of_requests_that_never_ran_keep_their_ids(oai: openai.OpenAI) -> None:
    """An error file's lines of cancelled requests are rendered on each read: their ids are
    the same on every download (and in the partial output), one per request."""
    file = upload(oai, [chat_line(f"r{i}", model="slow-1") for i in range(30)])
    batch = oai.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    oai.batches.cancel(batch.id)
    done = wait_done(oai, batch.id)

    first, again = lines_of(oai, done.error_file_id), lines_of(oai, done.error_file_id)
    partial = [json.loads(line) for line in partial_output(oai, batch.id).text.splitlines()]
    ids = {custom_id: line["id"] for custom_id, line in first.items()}
    assert len(ids) > 20
    assert {custom_id: line["id"] for custom_id, line in again.items()} == ids
    assert {line["custom_id"]: line["id"] for line in partial if line["error"]} == ids
    assert len(set(ids.values())) == len(ids)


def test_cancel_of_a_completed_batch_is_refused(oai: openai.OpenAI) -> None:
    batch = run_batch(oai, [chat_line("a")])

    with pytest.raises(openai.BadRequestError) as refused:
        oai.batches.cancel(batch.id)
    assert "completed" in refused.value.message


# --- bad input files ---------------------------------------------------------------------

BAD_FILES = [
    # a line that is not JSON
    (jsonl([chat_line("a")]) + b"{not json\n", 2, "invalid_json_line"),
    # a line whose url is not the batch's endpoint
    (jsonl([chat_line("a"), embedding_line("b")]), 2, "url_mismatch"),
    # the same custom_id twice
    (jsonl([chat_line("a"), chat_line("a")]), 2, "duplicate_custom_id"),
    # a model no backend serves
    (jsonl([chat_line("a", model="gpt-nothing")]), 1, "model_not_found"),
    # a method other than POST
    (jsonl([chat_line("a") | {"method": "GET"}]), 1, "invalid_request"),
    # a line without a body
    (jsonl([{"custom_id": "a", "method": "POST", "url": CHAT}]), 1, "invalid_request"),
    # a body without a model
    (jsonl([chat_line("a") | {"body": {"messages": []}}]), 1, "invalid_request"),
    # no line at all
    (b"\n", None, "empty_file"),
]


@pytest.mark.parametrize(("data", "line", "code"), BAD_FILES)
def test_a_bad_input_file_fails_the_batch_at_validation(
    oai: openai.OpenAI, data: bytes, line: int | None, code: str
) -> None:
    batch = run_batch(oai, data)

    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.errors is not None
    assert batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.line, error.code) == (line, code)
    assert error.message
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.request_counts is not None
    assert batch.request_counts.total == 0


def test_every_bad_line_is_named(oai: openai.OpenAI) -> None:
    data = jsonl([chat_line("a"), chat_line("a"), embedding_line("b")]) + b"[]\n"

    batch = run_batch(oai, data)

    assert batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "duplicate_custom_id"),
        (3, "url_mismatch"),
        (4, "invalid_request"),
    ]


@pytest.mark.parametrize(
    ("create", "status", "param"),
    [
        ({"input_file_id": "file-nothing", "endpoint": CHAT}, 404, "file_id"),
        ({"endpoint": "/v1/images/edits"}, 400, "endpoint"),
        ({"endpoint": CHAT, "completion_window": "1h"}, 400, "completion_window"),
        ({"endpoint": CHAT, "metadata": {str(i): "" for i in range(17)}}, 400, "metadata"),
    ],
)
def test_a_bad_create_is_refused_with_openai_error(
    oai: openai.OpenAI, create: dict[str, Any], status: int, param: str
) -> None:
    file = upload(oai, [chat_line("a")])
    params: dict[str, Any] = {"input_file_id": file.id, "completion_window": "24h"} | create

    with pytest.raises(openai.APIStatusError) as refused:
        oai.batches.create(**params)

    assert refused.value.status_code == status
    assert refused.value.param == param
    assert isinstance(refused.value.body, dict)
    assert set(refused.value.body) == {"message", "type", "param", "code"}


def test_an_upload_for_another_purpose_is_refused(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert refused.value.param == "purpose"


def test_an_upload_over_the_line_limit_is_refused(start_server: StartServer) -> None:
    with sdk(start_server(max_file_lines=2)) as client:
        with pytest.raises(openai.BadRequestError):
            upload(client, [chat_line(str(i)) for i in range(3)])
        assert upload(client, [chat_line(str(i)) for i in range(2)]).bytes > 0


def test_an_upload_over_the_size_limit_is_refused(start_server: StartServer) -> None:
    with sdk(start_server(max_file_bytes=1000)) as client:
        with pytest.raises(openai.APIStatusError) as refused:
            upload(client, b"x" * 1001)
        assert refused.value.status_code == 413
        assert list(client.files.list()) == []


def test_unknown_ids_and_routes_answer_openai_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as batch:
        oai.batches.retrieve("batch_nothing")
    assert batch.value.code == "batch_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.files.content("file-nothing")
    with pytest.raises(openai.NotFoundError):
        oai.files.list(after="file-nothing")


# --- the two faces and the workspaces ----------------------------------------------------


def test_the_faces_do_not_see_each_others_batches(start_server: StartServer) -> None:
    server = start_server()
    with sdk(server) as oai, anthropic.Anthropic(base_url=server.url, api_key="k") as claude:
        openai_batch = run_batch(oai, [chat_line("a")])
        message_batch = claude.messages.batches.create(requests=[mock_request("a")])

        with pytest.raises(anthropic.NotFoundError):
            claude.messages.batches.retrieve(openai_batch.id)
        with pytest.raises(openai.NotFoundError):
            oai.batches.retrieve(message_batch.id)
        assert [b.id for b in oai.batches.list()] == [openai_batch.id]
        assert [b.id for b in claude.messages.batches.list()] == [message_batch.id]


def test_another_workspaces_ids_answer_404(start_server: StartServer, tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    server = start_server()
    with sdk(server, keys["alice"]) as alice, sdk(server, keys["bob"]) as bob:
        batch = run_batch(alice, [chat_line("a")])
        assert batch.output_file_id is not None
        for file_id in (batch.input_file_id, batch.output_file_id):
            with pytest.raises(openai.NotFoundError):
                bob.files.retrieve(file_id)
            with pytest.raises(openai.NotFoundError):
                bob.files.content(file_id)
            with pytest.raises(openai.NotFoundError):
                bob.files.delete(file_id)
        with pytest.raises(openai.NotFoundError):
            bob.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            bob.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            bob.batches.create(
                input_file_id=batch.input_file_id, endpoint=CHAT, completion_window="24h"
            )
        assert list(bob.files.list()) == []
        assert list(bob.batches.list()) == []
        with pytest.raises(openai.AuthenticationError):
            sdk(server, "sk-wrong").files.list()


# --- PostgreSQL ----------------------------------------------------------------------------


def test_the_face_on_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    """The same store rules on PostgreSQL: files in chunks, their pages, the dialect filter,
    output and error files, cancel."""
    url = postgres.new_database_sync()
    settings = make_settings(str(tmp_path / "unused.db"), db=url, backends=[SLOW_BACKEND])
    with serve_batchd(settings) as server, sdk(server) as client:
        refused = chat_line("bad") | {"body": {"model": "mock", "messages": "not a list"}}
        batch = run_batch(client, [chat_line("ok"), refused])
        assert batch.status == "completed"
        assert list(lines_of(client, batch.output_file_id)) == ["ok"]
        assert list(lines_of(client, batch.error_file_id)) == ["bad"]
        uploads = [f.id for f in client.files.list(purpose="batch", order="asc", limit=1)]
        assert uploads == [batch.input_file_id]
        assert {f.id for f in client.files.list(purpose="batch_output")} == {
            batch.output_file_id,
            batch.error_file_id,
        }
        big = upload(client, [chat_line(f"r{i}", model="slow-1") for i in range(30)])
        running = client.batches.create(
            input_file_id=big.id, endpoint=CHAT, completion_window="24h"
        )
        client.batches.cancel(running.id)
        done = wait_done(client, running.id)
        assert done.status == "cancelled"
        ids = lines_of(client, done.output_file_id) | lines_of(client, done.error_file_id)
        assert sorted(ids) == sorted(f"r{i}" for i in range(30))
        assert [b.id for b in client.batches.list()] == [running.id, batch.id]
        client.files.delete(big.id)
        with pytest.raises(openai.NotFoundError):
            client.files.content(big.id)
    assert asyncio.run(pg_count_mismatches(url)) == []


def held_backend(held: FakeUpstream) -> dict[str, Any]:
    """A backend of one call at a time to the held upstream (``claude-*`` models)."""
    return {
        "name": "upstream",
        "kind": "anthropic",
        "base_url": held.url,
        "models": ["claude-*"],
        "max_concurrency": 1,
        "adaptive_concurrency": False,
    }


def test_unrun_requests_expire_into_the_error_file(
    start_server: StartServer, held: FakeUpstream
) -> None:
    clock = ManualClock()
    backend = held_backend(held)
    server = start_server(batch_ttl_seconds=3600.0, backends=[backend], clock=clock)
    with sdk(server) as client:
        file = upload(client, [chat_line(f"r{i}", model="claude-expiring") for i in range(10)])
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        held.release(2)
        wait_until(lambda: completed(client, batch.id) == 2, "two requests did not complete")
        clock.advance(3600.0)
        done = wait_done(client, batch.id, timeout=30)
        held.release()
        output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)

    assert done.status == "expired"
    assert done.expired_at is not None
    assert len(output) == 2
    assert sorted(output | errors) == sorted(f"r{i}" for i in range(10))
    assert {line["error"]["code"] for line in errors.values()} == {"batch_expired"}


def test_a_batchs_estimated_input_tokens_count_against_the_backlog_quota(
    start_server: StartServer, held: FakeUpstream
) -> None:
    """An OpenAI batch's input tokens are estimated on create, as the Messages face's: a
    running batch's count against max_queued_input_tokens_per_workspace."""
    server = start_server(
        backends=[held_backend(held)], max_queued_input_tokens_per_workspace=4_000
    )
    lines = [chat_line(f"r{i}", "word " * 1_000, model="claude-held") for i in range(2)]
    with sdk(server) as client:
        first = client.batches.create(
            input_file_id=upload(client, lines).id, endpoint=CHAT, completion_window="24h"
        )
        with pytest.raises(openai.RateLimitError) as refused:
            client.batches.create(
                input_file_id=upload(client, lines).id, endpoint=CHAT, completion_window="24h"
            )
        held.release()
        assert wait_done(client, first.id).status == "completed"

    assert "max_queued_input_tokens_per_workspace" in refused.value.message
    assert "adds about 25" in refused.value.message  # two lines of about 5,000 characters


# --- files expire -------------------------------------------------------------------------

FORBIDDEN_IMAGE = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}


def rows(db: Path, sql: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        [[n]] = conn.execute(sql).fetchall()
        return int(n)


def gone(client: openai.OpenAI, file_id: str) -> bool:
    """The file answers 404 to retrieve and content, and delete finds nothing."""
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(file_id)
    return True


def purging_server(
    start_server: StartServer, tmp_path: Path, **options: Any
) -> tuple[RunningServer, ManualClock, Path]:
    """A server on a clock the test moves, whose purger looks every 50 ms, and its database."""
    clock = ManualClock()
    server = start_server(clock=clock, purge_interval_seconds=0.05, **options)
    return server, clock, tmp_path / "batchd.db"


def test_an_upload_past_its_expires_at_is_gone_and_its_bytes_deleted(
    start_server: StartServer, tmp_path: Path
) -> None:
    server, clock, db = purging_server(start_server, tmp_path)
    with sdk(server) as client:
        data = io.BytesIO(jsonl([chat_line("a")]))
        hour = client.files.create(
            file=("input.jsonl", data),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        kept = upload(client, [chat_line("b")])  # purpose batch: 30 days
        clock.advance(3600)
        assert gone(client, hour.id)
        with pytest.raises(openai.NotFoundError):
            client.batches.create(input_file_id=hour.id, endpoint=CHAT, completion_window="24h")
        listed = [f.id for f in client.files.list()]
        wait_until(lambda: rows(db, "SELECT count(*) FROM files") == 1, "not deleted")

    assert hour.expires_at == hour.created_at + 3600
    assert kept.expires_at == kept.created_at + 30 * 24 * 3600
    assert listed == [kept.id]
    assert rows(db, "SELECT count(*) FROM file_chunks") == 1  # the kept file's


def test_output_and_error_files_expire_after_the_batch_ends_and_take_its_results(
    start_server: StartServer, held: FakeUpstream, tmp_path: Path
) -> None:
    """``output_expires_after`` counts from the files' creation, the batch's end (not its
    creation); past it both files are gone, and the purger deletes the batch's requests."""
    server, clock, db = purging_server(start_server, tmp_path, backends=[held_backend(held)])
    content = [{"type": "text", "text": "what is this?"}, FORBIDDEN_IMAGE]
    refused = chat_line("bad", model="claude-x") | {
        "body": {"model": "claude-x", "messages": [{"role": "user", "content": content}]}
    }
    with sdk(server) as client:
        file = upload(client, [chat_line("ok", model="claude-held"), refused])
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        )
        clock.advance(7200)  # the batch runs longer than its files' lifetime
        held.release()
        done = wait_done(client, batch.id)
        assert done.output_file_id is not None
        assert done.error_file_id is not None
        files = [
            client.files.retrieve(done.output_file_id),
            client.files.retrieve(done.error_file_id),
        ]
        assert list(lines_of(client, done.output_file_id)) == ["ok"]
        assert list(lines_of(client, done.error_file_id)) == ["bad"]
        clock.advance(3600)
        assert gone(client, done.output_file_id)
        assert gone(client, done.error_file_id)
        assert list(client.files.list(purpose="batch_output")) == []
        purged = "SELECT count(*) FROM batches WHERE purged_at IS NOT NULL"
        wait_until(lambda: rows(db, purged) == 1, "the batch's requests were not deleted")
        kept = client.batches.retrieve(batch.id)

    assert done.status == "completed"
    assert done.completed_at is not None
    assert [(f.created_at, f.expires_at) for f in files] == [
        (done.completed_at, done.completed_at + 3600)
    ] * 2
    assert rows(db, "SELECT count(*) FROM requests") == 0
    assert rows(db, "SELECT count(*) FROM files WHERE batch_seq IS NOT NULL") == 0
    assert kept.request_counts == done.request_counts  # the batch stays, with its counts


def test_output_files_live_no_longer_than_the_batchs_results(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Past retention (``results_retention_seconds`` from the batch's creation) the output
    file is gone with the results, whatever its ``output_expires_after``."""
    server, clock, db = purging_server(start_server, tmp_path, results_retention_seconds=5000)
    with sdk(server) as client:
        done = run_batch(client, [chat_line("a"), chat_line("b")])
        assert done.output_file_id is not None
        output = client.files.retrieve(done.output_file_id)
        clock.advance(5000)
        assert gone(client, done.output_file_id)
        wait_until(lambda: rows(db, "SELECT count(*) FROM requests") == 0, "not purged")

    assert output.expires_at == done.created_at + 5000
    assert rows(db, "SELECT count(*) FROM files WHERE batch_seq IS NOT NULL") == 0


def completed(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    assert counts is not None
    return counts.completed


def test_a_chat_line_naming_a_forbidden_url_is_refused_in_the_error_file(
    oai: openai.OpenAI,
) -> None:
    """The URL policy of the synchronous routes holds for batch lines: a media URL on a
    private address is that line's 400, its neighbours run."""
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}
    content = [{"type": "text", "text": "what is this?"}, image]
    batch = run_batch(oai, [chat_line("ok"), chat_line("ssrf") | {"body": {
        "model": "mock", "messages": [{"role": "user", "content": content}]}}])  # fmt: skip

    assert batch.status == "completed"
    assert list(lines_of(oai, batch.output_file_id)) == ["ok"]
    [line] = lines_of(oai, batch.error_file_id).values()
    assert line["custom_id"] == "ssrf"
    assert line["response"]["status_code"] == 400
    assert "169.254.169.254" in line["response"]["body"]["error"]["message"]


# --- webhooks ------------------------------------------------------------------------------


def test_batches_deliver_openai_webhook_events_with_the_batch_object(
    start_server: StartServer,
) -> None:
    """An OpenAI-face batch sends OpenAI's event for how it ended, its batch object as
    ``data``, signed per Standard Webhooks; a message batch still sends its own events."""
    server = start_server(backends=[SLOW_BACKEND], webhook_allow_private_urls=True)
    with (
        serve_receiver() as receiver,
        sdk(server) as client,
        anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as claude,
    ):
        endpoint = claude.post("/v1/webhooks", body={"url": receiver.url}, cast_to=object)
        assert isinstance(endpoint, dict)
        assert {"batch.completed", "batch.cancelled", "batch.failed"} <= set(endpoint["events"])
        completed = run_batch(client, [chat_line("a"), chat_line("b")])
        failed = run_batch(client, b"\n")
        file = upload(client, [chat_line(f"r{i}", model="slow-1") for i in range(20)])
        running = client.batches.create(
            input_file_id=file.id, endpoint=CHAT, completion_window="24h"
        )
        client.batches.cancel(running.id)
        cancelled = wait_done(client, running.id)
        message_batch = claude.messages.batches.create(requests=[mock_request("m")])
        received = receiver.wait_for(4)
    events = {p["data"]["id"]: p for p in (r.verify(endpoint["secret"]) for r in received)}
    assert len(received) == len(events) == 4  # one event per batch, each once
    assert (completed.status, failed.status, cancelled.status) == (
        "completed",
        "failed",
        "cancelled",
    )
    for batch, event in [
        (completed, "batch.completed"),
        (failed, "batch.failed"),
        (cancelled, "batch.cancelled"),
    ]:
        assert events[batch.id]["type"] == event
        assert Batch.model_validate(events[batch.id]["data"]) == batch
    assert events[message_batch.id]["type"] == "message_batch.ended"
    assert events[message_batch.id]["data"]["type"] == "message_batch"
    assert events[message_batch.id]["data"]["request_counts"]["succeeded"] == 1
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        received[0].verify("whsec_" + "A" * 32)


# --- batchd's own: Idempotency-Key on a create, output lines while a batch runs ------------


def test_two_creates_with_one_idempotency_key_make_one_batch(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line("a"), chat_line("b")])
    key = {"Idempotency-Key": "create-once"}
    first = oai.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", extra_headers=key
    )
    again = oai.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", extra_headers=key
    )

    assert again.id == first.id
    assert [b.id for b in oai.batches.list()] == [first.id]
    other = oai.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert other.id != first.id


def test_one_idempotency_key_with_another_body_is_refused(oai: openai.OpenAI) -> None:
    file = upload(oai, [chat_line("a")])
    key = {"Idempotency-Key": "create-once"}
    first = oai.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", extra_headers=key
    )
    with pytest.raises(openai.BadRequestError) as refused:
        oai.batches.create(
            input_file_id=file.id,
            endpoint=CHAT,
            completion_window="24h",
            metadata={"other": "body"},
            extra_headers=key,
        )

    assert refused.value.type == "invalid_request_error"
    assert "different request body" in refused.value.message
    assert [b.id for b in oai.batches.list()] == [first.id]


def test_the_idempotency_key_of_the_other_face_is_not_this_ones(start_server: StartServer) -> None:
    """The faces' digests differ, so a key one face used refuses the other's body."""
    server = start_server()
    with sdk(server) as client:
        file = upload(client, [chat_line("a")])
        key = {"Idempotency-Key": "shared"}
        client.batches.create(
            input_file_id=file.id, endpoint=CHAT, completion_window="24h", extra_headers=key
        )
    claude = anthropic.Anthropic(base_url=server.url, api_key="sk-test", max_retries=0)
    with claude, pytest.raises(anthropic.BadRequestError):
        claude.messages.batches.create(requests=[mock_request("a")], extra_headers=key)


def partial_output(
    client: openai.OpenAI, batch_id: str, after: str | None = None
) -> httpx.Response:
    params = {"partial": "true"} | ({} if after is None else {"after": after})
    response = client.get(
        f"/batches/{batch_id}/output", cast_to=httpx.Response, options={"params": params}
    )
    assert response.status_code == 200
    return response


def completed_at_least(client: openai.OpenAI, batch_id: str, n: int) -> bool:
    return completed(client, batch_id) >= n


def test_output_lines_while_the_batch_runs(start_server: StartServer, held: FakeUpstream) -> None:
    """``GET /v1/batches/{id}/output?partial=true`` (batchd's own): a growing prefix of the
    lines recorded, read on from a cursor without repeats, and in the end the output and
    error files' lines."""
    backend = held_backend(held)
    with sdk(start_server(backends=[backend])) as client:
        file = upload(client, [chat_line(f"r{i}", model="claude-held") for i in range(6)])
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        read: list[str] = []
        snapshots: list[list[str]] = []
        cursor: str | None = None
        for released, done in ((0, 0), (2, 2), (1, 3), (None, 6)):
            if released != 0:
                held.release(released)
                reached = functools.partial(completed_at_least, client, batch.id, done)
                wait_until(reached, "requests not done")
            step = partial_output(client, batch.id, cursor)
            cursor = step.headers["batchd-results-cursor"]
            read += step.text.splitlines()
            snapshots.append(partial_output(client, batch.id).text.splitlines())
        ended = wait_done(client, batch.id)
        final = client.files.content(ended.output_file_id or "").text.splitlines()
        if ended.error_file_id:
            final += client.files.content(ended.error_file_id).text.splitlines()
        last = partial_output(client, batch.id, cursor)

    assert ended.status == "completed"
    for before, after in itertools.pairwise(snapshots):
        assert after[: len(before)] == before
    assert len(snapshots[1]) >= 2
    assert read == snapshots[-1]
    assert len(read) == len(set(read)) == 6
    assert set(read) == set(final)
    assert last.text == ""
    assert last.headers["batchd-results-cursor"] == cursor


def test_output_lines_need_a_cursor_of_the_batch(oai: openai.OpenAI) -> None:
    batch = run_batch(oai, [chat_line("a")])
    cursor = partial_output(oai, batch.id).headers["batchd-results-cursor"]
    params = {"partial": "true", "after": str(int(cursor) + 1)}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.get(f"/batches/{batch.id}/output", cast_to=httpx.Response, options={"params": params})
    assert refused.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        oai.get("/batches/batch_nope/output", cast_to=httpx.Response)
