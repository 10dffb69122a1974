"""Bad input over raw HTTP: each gets the right status and the API's error envelope."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import StartServer, mock_request
from tests.support.server import RunningServer

JSON_HEADERS = {"Content-Type": "application/json", "x-api-key": "sk-test"}
BATCHES = "/v1/messages/batches"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    def jsonl(self) -> list[Any]:
        """The body as JSONL: one object a line, each line ended by a newline."""
        assert self.raw.endswith(b"\n")
        return [json.loads(line) for line in self.raw[:-1].split(b"\n")]


def call(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a fresh connection; headers are sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(
            method, path, body=body, headers=headers or JSON_HEADERS, encode_chunked=chunked
        )
        response = conn.getresponse()
        raw = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    return Reply(response.status, reply_headers, raw)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def assert_error(reply: Reply, status: int, error_type: str) -> None:
    """The reply is exactly the API's error envelope, with a matching request-id header."""
    assert reply.status == status, reply.body
    request_id = reply.headers["request-id"]
    assert request_id.startswith("req_")
    assert reply.body == {
        "type": "error",
        "error": {"type": error_type, "message": reply.body["error"]["message"]},
        "request_id": request_id,
    }
    assert isinstance(reply.body["error"]["message"], str)
    assert reply.body["error"]["message"]


def stored_batches(server: RunningServer) -> list[Any]:
    reply = call(server, "GET", BATCHES)
    assert reply.status == 200
    return list(reply.body["data"])


def items(*custom_ids: Any) -> bytes:
    return dumps({"requests": [mock_request(c) for c in custom_ids]})


def with_item(**changes: Any) -> bytes:
    """A one-request body whose item has keys replaced (a value of ... removes the key)."""
    item: dict[str, Any] = {**mock_request("a"), **changes}
    return dumps({"requests": [{k: v for k, v in item.items() if v is not ...}]})


BIG_TEXT = "x" * 1500  # with max_body_bytes=1000 a request holding this is too large

BAD_CREATES = [
    # body is not JSON
    pytest.param(b"{not json", 400, "invalid_request_error", id="not-json"),
    # body is empty
    pytest.param(b"", 400, "invalid_request_error", id="empty-body"),
    # a string in the envelope is not UTF-8
    pytest.param(
        b'{"requests": [{"custom_id": "\xff", "params": {}}]}',
        400,
        "invalid_request_error",
        id="not-utf8",
    ),
    # body is a JSON array, not an object
    pytest.param(b"[]", 400, "invalid_request_error", id="json-array"),
    # body is an empty object: `requests` is required
    pytest.param(b"{}", 400, "invalid_request_error", id="empty-object"),
    # `requests` is null
    pytest.param(dumps({"requests": None}), 400, "invalid_request_error", id="requests-null"),
    # `requests` is an empty list
    pytest.param(dumps({"requests": []}), 400, "invalid_request_error", id="requests-empty"),
    # `requests` is an object, not a list
    pytest.param(
        dumps({"requests": mock_request("a")}), 400, "invalid_request_error", id="requests-object"
    ),
    # `requests` is a string
    pytest.param(dumps({"requests": "a"}), 400, "invalid_request_error", id="requests-string"),
    # a request item is not an object
    pytest.param(dumps({"requests": ["a"]}), 400, "invalid_request_error", id="item-string"),
    # one more request than the server's max_requests_per_batch of 3
    pytest.param(items("a", "b", "c", "d"), 400, "invalid_request_error", id="too-many"),
    # custom_id is empty
    pytest.param(items(""), 400, "invalid_request_error", id="custom-id-empty"),
    # custom_id has 65 characters
    pytest.param(items("a" * 65), 400, "invalid_request_error", id="custom-id-65"),
    # custom_id has a space
    pytest.param(items("a b"), 400, "invalid_request_error", id="custom-id-space"),
    # custom_id has a dot
    pytest.param(items("a.b"), 400, "invalid_request_error", id="custom-id-dot"),
    # custom_id has a non-ASCII letter
    pytest.param(items("caf\u00e9"), 400, "invalid_request_error", id="custom-id-non-ascii"),
    # custom_id ends with a newline (a `$`-anchored regex would let it through)
    pytest.param(items("a\n"), 400, "invalid_request_error", id="custom-id-newline"),
    # custom_id is a number
    pytest.param(items(7), 400, "invalid_request_error", id="custom-id-int"),
    # custom_id is null
    pytest.param(items(None), 400, "invalid_request_error", id="custom-id-null"),
    # custom_id is used twice
    pytest.param(items("a", "b", "a"), 400, "invalid_request_error", id="custom-id-duplicate"),
    # custom_id is missing
    pytest.param(with_item(custom_id=...), 400, "invalid_request_error", id="custom-id-missing"),
    # params is missing
    pytest.param(with_item(params=...), 400, "invalid_request_error", id="params-missing"),
    # params is a list
    pytest.param(with_item(params=[1]), 400, "invalid_request_error", id="params-list"),
    # params is a string
    pytest.param(with_item(params="{}"), 400, "invalid_request_error", id="params-string"),
    # params is null
    pytest.param(with_item(params=None), 400, "invalid_request_error", id="params-null"),
    # a request item has a key besides custom_id and params
    pytest.param(with_item(extra=1), 400, "invalid_request_error", id="item-unknown-key"),
    # the body has a key besides requests
    pytest.param(
        dumps({"requests": [mock_request("a")], "model": "mock"}),
        400,
        "invalid_request_error",
        id="top-level-unknown-key",
    ),
    # the body is over max_body_bytes (1000 here)
    pytest.param(
        dumps({"requests": [mock_request("a", BIG_TEXT)]}),
        413,
        "request_too_large",
        id="body-too-large",
    ),
]


@pytest.fixture
def small_server(start_server: StartServer) -> RunningServer:
    """A server with tiny limits: 1000-byte bodies, 3 requests a batch."""
    return start_server(max_body_bytes=1000, max_requests_per_batch=3)


@pytest.mark.parametrize(("body", "status", "error_type"), BAD_CREATES)
def test_bad_create_is_rejected_and_nothing_is_stored(
    small_server: RunningServer, body: bytes, status: int, error_type: str
) -> None:
    reply = call(small_server, "POST", BATCHES, body)

    assert_error(reply, status, error_type)
    assert stored_batches(small_server) == []


def test_a_batch_at_the_limits_is_accepted(small_server: RunningServer) -> None:
    body = items("a" * 64, "b", "c")  # max_requests_per_batch requests, a 64-char custom_id

    reply = call(small_server, "POST", BATCHES, body)

    assert reply.status == 200, reply.body
    assert reply.body["request_counts"]["processing"] == 3
    assert [b["id"] for b in stored_batches(small_server)] == [reply.body["id"]]


def test_a_chunked_body_over_the_limit_is_too_large(small_server: RunningServer) -> None:
    chunks = [b'{"requests": [', b" " * 600, b" " * 600, b"]}"]  # no Content-Length

    reply = call(small_server, "POST", BATCHES, iter(chunks))

    assert_error(reply, 413, "request_too_large")
    assert stored_batches(small_server) == []


def test_a_content_length_over_the_limit_is_refused_unread(small_server: RunningServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", small_server.port, timeout=30)
    try:
        conn.putrequest("POST", BATCHES)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "1000000")
        conn.endheaders(b"{}")  # the server must answer without waiting for the rest
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        reply = Reply(response.status, headers, response.read())
    finally:
        conn.close()

    assert_error(reply, 413, "request_too_large")
    assert stored_batches(small_server) == []


def test_a_true_100001_request_batch_is_rejected(server: RunningServer) -> None:
    item = b'{"custom_id":"r%d","params":{"model":"mock","max_tokens":1,"messages":[]}}'
    body = b'{"requests":[' + b",".join(item % i for i in range(100_001)) + b"]}"

    started = time.monotonic()
    reply = call(server, "POST", BATCHES, body)

    assert_error(reply, 400, "invalid_request_error")
    assert "100000" in reply.body["error"]["message"]
    assert time.monotonic() - started < 20
    assert stored_batches(server) == []


def test_params_that_are_not_utf8_error_only_their_request(server: RunningServer) -> None:
    good = dumps(mock_request("good"))
    bad = good.replace(b'"good"', b'"bad"').replace(b"hello", b"\xff")
    batch = call(server, "POST", BATCHES, b'{"requests": [' + bad + b", " + good + b"]}")
    assert batch.status == 200, batch.body

    ended = wait_ended_raw(server, batch.body["id"])
    lines = call(server, "GET", f"{BATCHES}/{batch.body['id']}/results").jsonl()

    results = {line["custom_id"]: line["result"] for line in lines}
    assert results["bad"]["error"]["error"]["type"] == "invalid_request_error"
    assert results["good"]["type"] == "succeeded"
    assert ended["request_counts"]["errored"] == 1


def test_a_message_that_is_not_utf8_is_invalid(server: RunningServer) -> None:
    body = b'{"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "\xff"}]}'

    reply = call(server, "POST", "/v1/messages", body)

    assert_error(reply, 400, "invalid_request_error")


# --- other endpoints ---------------------------------------------------------------------

UNKNOWN = "msgbatch_01AAAAAAAAAAAAAAAAAAAAAAAA"

BAD_CALLS = [
    # limit below 1
    pytest.param("GET", f"{BATCHES}?limit=0", 400, "invalid_request_error", id="limit-0"),
    # limit above 1000
    pytest.param("GET", f"{BATCHES}?limit=1001", 400, "invalid_request_error", id="limit-1001"),
    # limit not a number
    pytest.param("GET", f"{BATCHES}?limit=abc", 400, "invalid_request_error", id="limit-abc"),
    # limit with a trailing no-break space (int() would read it as 2)
    pytest.param("GET", f"{BATCHES}?limit=2%C2%A0", 400, "invalid_request_error", id="limit-nbsp"),
    # limit with a sign
    pytest.param("GET", f"{BATCHES}?limit=%2B2", 400, "invalid_request_error", id="limit-plus"),
    # limit given twice (FastAPI would take the last)
    pytest.param(
        "GET", f"{BATCHES}?limit=x&limit=2", 400, "invalid_request_error", id="limit-twice"
    ),
    # a cursor given twice
    pytest.param(
        "GET",
        f"{BATCHES}?after_id={{id}}&after_id={{id}}",
        400,
        "invalid_request_error",
        id="after-twice",
    ),
    # both cursors at once
    pytest.param(
        "GET",
        f"{BATCHES}?after_id={{id}}&before_id={{id}}",
        400,
        "invalid_request_error",
        id="both-cursors",
    ),
    # a cursor that names no batch
    pytest.param(
        "GET", f"{BATCHES}?after_id={UNKNOWN}", 404, "not_found_error", id="after-unknown"
    ),
    # retrieve an unknown batch
    pytest.param("GET", f"{BATCHES}/{UNKNOWN}", 404, "not_found_error", id="retrieve-unknown"),
    # cancel an unknown batch
    pytest.param(
        "POST", f"{BATCHES}/{UNKNOWN}/cancel", 404, "not_found_error", id="cancel-unknown"
    ),
    # delete an unknown batch
    pytest.param("DELETE", f"{BATCHES}/{UNKNOWN}", 404, "not_found_error", id="delete-unknown"),
    # results of an unknown batch
    pytest.param(
        "GET", f"{BATCHES}/{UNKNOWN}/results", 404, "not_found_error", id="results-unknown"
    ),
    # results of a batch that has not ended
    pytest.param(
        "GET", f"{BATCHES}/{{id}}/results", 400, "invalid_request_error", id="results-unfinished"
    ),
    # delete a batch that has not ended
    pytest.param(
        "DELETE", f"{BATCHES}/{{id}}", 400, "invalid_request_error", id="delete-unfinished"
    ),
    # a route that does not exist
    pytest.param("GET", "/v1/nothing-here", 404, "not_found_error", id="unknown-route"),
    # a method the batches collection does not allow
    pytest.param("PUT", BATCHES, 405, "invalid_request_error", id="put-batches"),
    # a method one batch does not allow
    pytest.param("PATCH", f"{BATCHES}/{{id}}", 405, "invalid_request_error", id="patch-batch"),
    # POST to results
    pytest.param(
        "POST", f"{BATCHES}/{{id}}/results", 405, "invalid_request_error", id="post-results"
    ),
]


@pytest.fixture
def idle_server(start_server: StartServer) -> RunningServer:
    """A server with no engine: batches stay in progress."""
    return start_server(engine=False)


def create(server: RunningServer, *custom_ids: str) -> dict[str, Any]:
    reply = call(server, "POST", BATCHES, items(*custom_ids))
    assert reply.status == 200, reply.body
    return dict(reply.body)


@pytest.mark.parametrize(("method", "path", "status", "error_type"), BAD_CALLS)
def test_bad_call_gets_the_error_envelope(
    idle_server: RunningServer, method: str, path: str, status: int, error_type: str
) -> None:
    batch = create(idle_server, "a")

    reply = call(idle_server, method, path.format(id=batch["id"]))

    assert_error(reply, status, error_type)
    assert call(idle_server, "GET", f"{BATCHES}/{batch['id']}").status == 200


# --- what the SDK sends: JSON content type, empty body -----------------------------------


def test_cancel_with_json_content_type_and_empty_body(idle_server: RunningServer) -> None:
    batch = create(idle_server, "a", "b")
    headers = {**JSON_HEADERS, "Content-Length": "0"}

    reply = call(idle_server, "POST", f"{BATCHES}/{batch['id']}/cancel", b"", headers)

    assert reply.status == 200, reply.body
    assert reply.body["id"] == batch["id"]
    assert reply.body["processing_status"] == "canceling"
    assert reply.body["cancel_initiated_at"] is not None
    assert reply.body["request_counts"]["canceled"] == 2


def wait_ended_raw(server: RunningServer, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body = call(server, "GET", f"{BATCHES}/{batch_id}").body
        if body["processing_status"] == "ended":
            return dict(body)
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_delete_with_json_content_type_and_no_body(server: RunningServer) -> None:
    batch = create(server, "a")
    wait_ended_raw(server, batch["id"])

    reply = call(server, "DELETE", f"{BATCHES}/{batch['id']}", None, JSON_HEADERS)

    assert reply.status == 200, reply.body
    assert reply.body == {"id": batch["id"], "type": "message_batch_deleted"}
    assert_error(call(server, "GET", f"{BATCHES}/{batch['id']}"), 404, "not_found_error")


DEEP = b"[" * 50_000 + b"]" * 50_000  # far past the decoder's recursion limit

DEEPLY_NESTED = [
    # a batch request's params (skipped over raw by the envelope decoder)
    pytest.param(BATCHES, b'{"requests":[{"custom_id":"a","params":' + DEEP + b"}]}", id="params"),
    # a count_tokens body
    pytest.param(
        "/v1/messages/count_tokens", b'{"model":"mock","messages":' + DEEP + b"}", id="count"
    ),
    # a Messages body
    pytest.param(
        "/v1/messages", b'{"model":"mock","max_tokens":1,"x":' + DEEP + b"}", id="messages"
    ),
]


@pytest.mark.parametrize(("path", "body"), DEEPLY_NESTED)
def test_json_nested_too_deeply_is_refused_not_a_500(
    server: RunningServer, path: str, body: bytes
) -> None:
    reply = call(server, "POST", path, body)

    assert_error(reply, 400, "invalid_request_error")
    assert stored_batches(server) == []
