"""Workspace isolation on every route: a table with one row per route the app serves.

Alice (workspace team-a) owns an ended batch; Bob (team-b) tries each route on it. A
route that holds workspace data must answer Bob as if the batch did not exist; a route
that holds none must leak nothing of Alice's. Every route but the public ones refuses a
caller with no key. A route added to the app without a row here fails
``test_every_route_has_an_isolation_case``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pytest

from batchd.schemas.openai import is_openai_path
from tests.conftest import mock_request, wait_ended
from tests.support.keys import make_keys
from tests.support.routes import served_routes
from tests.support.server import built_app, make_settings, serve_batchd
from tests.test_openai_face import CHAT, chat_line, run_batch

ALICES_HOOK = "https://hooks.example.com/alice"


@dataclass(frozen=True)
class World:
    url: str
    keys: dict[str, str]  # alice, bob
    batch_id: str  # Alice's, ended, one request errored
    openai_batch_id: str  # Alice's through the OpenAI face, ended, one line refused
    file_id: str  # that batch's output file
    alice_secrets: tuple[str, ...]  # what Bob must never see: ids, custom_ids, workspace
    endpoint_id: str = ""  # Alice's webhook endpoint

    def call(
        self, who: str | None, method: str, path: str, body: Any = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"x-api-key": self.keys[who]} if who else {}
        batch_id = self.openai_batch_id if path.startswith("/v1/batches") else self.batch_id
        path = path.format(
            batch_id=batch_id,
            file_id=self.file_id,
            path="console.js",
            endpoint_id=self.endpoint_id,
            custom_id="alice-ok",
        )
        return httpx.request(
            method, f"{self.url}{path}", headers=headers, json=body, timeout=30, **kwargs
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("isolation")
    keys = make_keys(tmp / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    with serve_batchd(make_settings(str(tmp / "batchd.db"))) as server:
        with anthropic.Anthropic(base_url=server.url, api_key=keys["alice"]) as alice:
            requests = [mock_request("alice-ok"), mock_request("alice-bad", max_tokens="x")]
            batch = alice.messages.batches.create(requests=requests)
            wait_ended(alice, batch.id)
            hook = ALICES_HOOK
            endpoint: Any = alice.post("/v1/webhooks", body={"url": hook}, cast_to=object)
        with openai.OpenAI(base_url=server.url + "/v1", api_key=keys["alice"]) as oai:
            refused = chat_line("alice-oai-bad") | {"body": {"model": "mock", "messages": "x"}}
            openai_batch = run_batch(oai, [chat_line("alice-oai-ok"), refused])
        assert openai_batch.output_file_id is not None
        secrets = (
            batch.id, "alice-ok", "alice-bad", "team-a", keys["alice"], openai_batch.id,
            openai_batch.input_file_id, openai_batch.output_file_id, "alice-oai-ok",
            endpoint["id"], hook,
        )  # fmt: skip
        yield World(
            server.url,
            keys,
            batch.id,
            openai_batch.id,
            openai_batch.output_file_id,
            secrets,
            endpoint["id"],
        )


def assert_not_found(reply: httpx.Response) -> None:
    assert reply.status_code == 404, reply.text
    if is_openai_path(reply.url.path):  # OpenAI's envelope has no not-found type
        assert reply.json()["error"]["type"] == "invalid_request_error"
    else:
        assert reply.json()["error"]["type"] == "not_found_error"


def refused_as_unknown(world: World, method: str, path: str) -> None:
    """Bob gets the 404 an unknown id gets, and Alice still sees her batch unchanged."""
    before = world.call("alice", "GET", "/v1/messages/batches/{batch_id}").json()

    assert_not_found(world.call("bob", method, path))
    assert world.call("alice", "GET", "/v1/messages/batches/{batch_id}").json() == before


def bobs_list_is_his_own(world: World, method: str, path: str) -> None:
    listed = world.call("bob", method, path)
    assert listed.status_code == 200
    assert world.batch_id not in [b["id"] for b in listed.json()["data"]]
    # Alice's id is no cursor for Bob either way.
    assert_not_found(world.call("bob", method, f"{path}?after_id={world.batch_id}"))
    assert_not_found(world.call("bob", method, f"{path}?before_id={world.batch_id}"))


def bobs_batch_is_not_alices(world: World, method: str, path: str) -> None:
    created = world.call("bob", method, path, {"requests": [mock_request("bobs")]})
    assert created.status_code == 200
    assert_not_found(world.call("alice", "GET", f"{path}/{created.json()['id']}"))
    alices = world.call("alice", "GET", path).json()["data"]
    assert [b["id"] for b in alices] == [world.batch_id]


def openai_refused_as_unknown(world: World, method: str, path: str) -> None:
    """The OpenAI face: Bob gets the 404 an unknown id gets; Alice's batch is unchanged."""
    before = world.call("alice", "GET", "/v1/batches/{batch_id}").json()

    assert_not_found(world.call("bob", method, path))
    assert world.call("alice", "GET", "/v1/batches/{batch_id}").json() == before


def openai_list_is_his_own(world: World, method: str, path: str) -> None:
    listed = world.call("bob", method, path)
    assert listed.status_code == 200
    for secret in world.alice_secrets:
        assert secret not in listed.text
    first_id = world.openai_batch_id if path == "/v1/batches" else world.file_id
    assert_not_found(world.call("bob", method, f"{path}?after={first_id}"))


def openai_create_is_bobs(world: World, method: str, path: str) -> None:
    """Bob cannot name Alice's file as his input; what he creates Alice cannot see."""
    body = {"input_file_id": world.file_id, "endpoint": CHAT, "completion_window": "24h"}
    if path == "/v1/batches":
        assert_not_found(world.call("bob", method, path, body))
    upload = world.call(
        "bob",
        "POST",
        "/v1/files",
        None,
        files={"file": ("x.jsonl", b"{}")},
        data={"purpose": "batch"},
    )
    assert upload.status_code == 200, upload.text
    if path == "/v1/files":
        assert_not_found(world.call("alice", "GET", f"/v1/files/{upload.json()['id']}"))
        return
    created = world.call("bob", method, path, body | {"input_file_id": upload.json()["id"]})
    assert created.status_code == 200, created.text
    assert_not_found(world.call("alice", "GET", f"/v1/batches/{created.json()['id']}"))


def alices_endpoint_is_not_bobs(world: World, method: str, path: str) -> None:
    """Bob gets the 404 of an unknown endpoint; Alice's is still there, unchanged."""
    before = world.call("alice", "GET", "/v1/webhooks").json()

    assert_not_found(world.call("bob", method, path))
    assert world.call("alice", "GET", "/v1/webhooks").json() == before
    assert world.endpoint_id in [e["id"] for e in before["data"]]


def bobs_endpoints_are_his_own(world: World, method: str, path: str) -> None:
    body = {"url": "https://hooks.example.com/bob"} if method == "POST" else None
    reply = world.call("bob", method, path, body)
    assert reply.status_code == 200, reply.text
    for secret in world.alice_secrets:
        assert secret not in reply.text
    alices = [e["id"] for e in world.call("alice", "GET", path).json()["data"]]
    assert alices == [world.endpoint_id]


def estimate_leaks_nothing(world: World, method: str, path: str) -> None:
    reply = world.call("bob", method, path, {"requests": [mock_request("bobs")]})
    assert reply.status_code == 200, reply.text
    for secret in world.alice_secrets:
        assert secret not in reply.text


def leaks_nothing(world: World, method: str, path: str) -> None:
    """A route with no workspace data: Bob's answer names nothing of Alice's."""
    body: dict[str, Any] = {
        "model": "mock",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if path == "/v1/embeddings":
        body = {"model": "mock", "input": "hi"}
    reply = world.call("bob", method, path, body if method == "POST" else None)
    assert reply.status_code == 200, reply.text
    for secret in world.alice_secrets:
        assert secret not in reply.text


def for_operators_only(world: World, method: str, path: str) -> None:
    """Server-wide figures and upstream error texts: Bob's key is no operator's."""
    reply = world.call("bob", method, path)
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["type"] == "permission_error"
    for secret in world.alice_secrets:
        assert secret not in reply.text


def the_same_for_everyone(world: World, method: str, path: str) -> None:
    """A static page or file: the same bytes whoever asks, naming nothing of Alice's."""
    as_alice, as_bob = world.call("alice", method, path), world.call("bob", method, path)
    assert as_alice.status_code == as_bob.status_code == 200
    assert as_alice.content == as_bob.content
    for secret in world.alice_secrets:
        assert secret not in as_bob.text


Check = Callable[[World, str, str], None]

ROUTES: dict[tuple[str, str], tuple[Check, bool]] = {
    # (method, path): (what Bob sees, needs a key)
    ("POST", "/v1/messages/batches"): (bobs_batch_is_not_alices, True),
    ("GET", "/v1/messages/batches"): (bobs_list_is_his_own, True),
    ("GET", "/v1/messages/batches/{batch_id}"): (refused_as_unknown, True),
    ("POST", "/v1/messages/batches/{batch_id}/cancel"): (refused_as_unknown, True),
    ("DELETE", "/v1/messages/batches/{batch_id}"): (refused_as_unknown, True),
    ("GET", "/v1/messages/batches/{batch_id}/results"): (refused_as_unknown, True),
    ("GET", "/console/api/batches/{batch_id}/errors"): (refused_as_unknown, True),
    ("GET", "/v1/messages/batches/{batch_id}/usage"): (refused_as_unknown, True),
    # webhook endpoints: a workspace's own
    ("POST", "/v1/webhooks"): (bobs_endpoints_are_his_own, True),
    ("GET", "/v1/webhooks"): (bobs_endpoints_are_his_own, True),
    ("GET", "/v1/webhooks/{endpoint_id}"): (alices_endpoint_is_not_bobs, True),
    ("DELETE", "/v1/webhooks/{endpoint_id}"): (alices_endpoint_is_not_bobs, True),
    ("POST", "/v1/webhooks/{endpoint_id}/test"): (alices_endpoint_is_not_bobs, True),
    ("GET", "/v1/webhooks/{endpoint_id}/deliveries"): (alices_endpoint_is_not_bobs, True),
    # usage of the caller's workspace (every workspace's for an operator only)
    ("GET", "/v1/usage"): (leaks_nothing, True),
    ("GET", "/console/api/usage"): (leaks_nothing, True),
    ("POST", "/v1/messages/batch_estimate"): (estimate_leaks_nothing, True),
    # batchd's own: the schedule, retry, details, the console's results
    ("GET", "/v1/messages/batches/{batch_id}/schedule"): (refused_as_unknown, True),
    ("POST", "/v1/messages/batches/{batch_id}/retry"): (refused_as_unknown, True),
    ("GET", "/v1/messages/batches/{batch_id}/details"): (refused_as_unknown, True),
    ("GET", "/console/api/batches/{batch_id}/results"): (refused_as_unknown, True),
    ("GET", "/console/api/batches/{batch_id}/results/{custom_id}"): (refused_as_unknown, True),
    # the OpenAI face
    ("POST", "/v1/files"): (openai_create_is_bobs, True),
    ("GET", "/v1/files"): (openai_list_is_his_own, True),
    ("GET", "/v1/files/{file_id}"): (openai_refused_as_unknown, True),
    ("GET", "/v1/files/{file_id}/content"): (openai_refused_as_unknown, True),
    ("DELETE", "/v1/files/{file_id}"): (openai_refused_as_unknown, True),
    ("POST", "/v1/batches"): (openai_create_is_bobs, True),
    ("GET", "/v1/batches"): (openai_list_is_his_own, True),
    ("GET", "/v1/batches/{batch_id}"): (openai_refused_as_unknown, True),
    ("POST", "/v1/batches/{batch_id}/cancel"): (openai_refused_as_unknown, True),
    ("GET", "/v1/batches/{batch_id}/output"): (openai_refused_as_unknown, True),
    # server-wide, holding no workspace's data
    ("POST", "/v1/messages"): (leaks_nothing, True),
    ("POST", "/v1/messages/count_tokens"): (leaks_nothing, True),
    ("POST", "/v1/chat/completions"): (leaks_nothing, True),
    ("POST", "/v1/embeddings"): (leaks_nothing, True),
    ("GET", "/v1/models"): (leaks_nothing, True),
    # every workspace's figures, the upstreams' error texts
    ("GET", "/status/backends"): (for_operators_only, True),
    ("GET", "/metrics"): (for_operators_only, True),
    ("GET", "/healthz"): (leaks_nothing, False),
    ("GET", "/openapi.json"): (leaks_nothing, False),
    # the console's shell and files; its data comes from the API routes above
    ("GET", "/console"): (the_same_for_everyone, False),
    ("GET", "/console/batches/{batch_id}"): (the_same_for_everyone, False),
    ("GET", "/console/usage"): (the_same_for_everyone, False),
    ("GET", "/console/webhooks"): (the_same_for_everyone, False),
    ("GET", "/console/static/{path}"): (the_same_for_everyone, False),
}


def test_every_route_has_an_isolation_case() -> None:
    app = built_app()

    assert served_routes(app) == set(ROUTES)


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[" ".join(r) for r in ROUTES])
def test_another_workspace_sees_nothing(world: World, method: str, path: str) -> None:
    check, _ = ROUTES[(method, path)]

    check(world, method, path)


@pytest.mark.parametrize(("method", "path"), list(ROUTES), ids=[" ".join(r) for r in ROUTES])
def test_no_key_no_data(world: World, method: str, path: str) -> None:
    _, needs_key = ROUTES[(method, path)]

    reply = world.call(None, method, path)

    if needs_key:
        assert reply.status_code == 401, reply.text
        if is_openai_path(path):
            assert reply.json()["error"]["code"] == "invalid_api_key"
        else:
            assert reply.json()["error"]["type"] == "authentication_error"
    else:
        assert reply.status_code == 200


def test_partial_results_of_another_workspace_are_a_404(world: World) -> None:
    path = "/v1/messages/batches/{batch_id}/results?partial=true"
    reply = world.call("bob", "GET", path)
    assert_not_found(reply)
    assert "batchd-results-cursor" not in reply.headers
    assert world.call("alice", "GET", path).status_code == 200
