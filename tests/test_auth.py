"""API keys, workspaces and the open loopback mode, through the real CLI and SDK."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from batchd.errors import AuthenticationFailed
from batchd.store import Store, open_store
from batchd.usecases.keys import Authenticator, create_key, decide_open_mode
from tests.conftest import StartServer, mock_request

BATCHD = [sys.executable, "-m", "batchd.cli"]


def _create_key(db: Path, name: str, workspace: str) -> str:
    done = subprocess.run(
        [*BATCHD, "keys", "create", name, "--workspace", workspace, "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    db = tmp_path / "batchd.db"
    return {"alice": _create_key(db, "alice", "team-a"), "bob": _create_key(db, "bob", "team-b")}


def _client(url: str, key: str | None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_keys_are_stored_only_as_hashes(tmp_path: Path, keys: dict[str, str]) -> None:
    with closing(sqlite3.connect(tmp_path / "batchd.db")) as db:
        stored = db.execute("SELECT key_hash FROM api_keys").fetchall()
        dump = "\n".join(db.iterdump())
    assert len(stored) == 2
    assert keys["alice"] not in dump
    assert keys["bob"] not in dump


def test_workspaces_do_not_see_each_others_batches(
    start_server: StartServer, keys: dict[str, str]
) -> None:
    server = start_server()
    with _client(server.url, keys["alice"]) as alice, _client(server.url, keys["bob"]) as bob:
        batch = alice.messages.batches.create(requests=[mock_request("a")])
        assert [b.id for b in bob.messages.batches.list()] == []
        for call in (
            bob.messages.batches.retrieve,
            bob.messages.batches.cancel,
            bob.messages.batches.delete,
        ):
            with pytest.raises(anthropic.NotFoundError):
                call(batch.id)
        assert [b.id for b in alice.messages.batches.list()] == [batch.id]


def test_bearer_and_x_api_key_are_both_accepted(
    start_server: StartServer, keys: dict[str, str]
) -> None:
    server = start_server()
    url = f"{server.url}/v1/messages/batches"
    with _client(server.url, keys["alice"]) as client:
        client.messages.batches.create(requests=[mock_request("a")])
    bearer = httpx.get(url, headers={"authorization": f"Bearer {keys['alice']}"})
    old_style = httpx.get(
        url, headers={"x-api-key": keys["alice"], "anthropic-version": "2023-06-01"}
    )
    assert bearer.status_code == old_style.status_code == 200
    assert bearer.json()["data"] == old_style.json()["data"] != []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "sk-wrong"},
        {"authorization": "Bearer sk-wrong"},
        {"authorization": "Basic x"},
    ],
)
def test_missing_or_wrong_keys_get_401(
    start_server: StartServer, keys: dict[str, str], headers: dict[str, str]
) -> None:
    server = start_server()
    response = httpx.get(f"{server.url}/v1/messages/batches", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["request-id"].startswith("req_")


def test_revoked_key_is_refused(tmp_path: Path, start_server: StartServer) -> None:
    db = tmp_path / "batchd.db"
    key = _create_key(db, "temp", "default")
    _create_key(db, "other", "default")
    key_id = subprocess.run(
        [*BATCHD, "keys", "list", "--db", f"sqlite:///{db}"], capture_output=True, text=True
    ).stdout.split()[0]
    subprocess.run([*BATCHD, "keys", "revoke", key_id, "--db", f"sqlite:///{db}"], check=True)
    server = start_server()
    with _client(server.url, key) as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.batches.list()


def test_no_keys_on_loopback_means_open(server: object) -> None:
    url = server.url  # type: ignore[attr-defined]
    with _client(url, "anything") as a, _client(url, "something-else") as b:
        batch = a.messages.batches.create(requests=[mock_request("a")])
        assert b.messages.batches.retrieve(batch.id).id == batch.id


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *BATCHD,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--db",
            f"sqlite:///{tmp_path}/x.db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "refusing to serve on 0.0.0.0 with no API keys" in done.stderr


# --- open mode: keyless, and only for this machine ---------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.9.9.9"])
def test_open_mode_serves_loopback_host_names(server: object, host: str) -> None:
    url = server.url  # type: ignore[attr-defined]
    reply = httpx.get(f"{url}/v1/messages/batches", headers={"host": host})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "10.0.0.1", "[::2]:80"])
def test_open_mode_refuses_a_foreign_host_name(server: object, host: str) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own host name."""
    url = server.url  # type: ignore[attr-defined]
    reply = httpx.get(f"{url}/v1/messages/batches", headers={"host": host})
    assert reply.status_code == 403
    assert reply.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize("origin", ["https://evil.example", "http://evil.example:8000", "null"])
def test_open_mode_refuses_web_pages_of_other_sites(server: object, origin: str) -> None:
    url = server.url  # type: ignore[attr-defined]
    created = httpx.post(
        f"{url}/v1/messages/batches",
        json={"requests": [mock_request("a")]},
        headers={"origin": origin},
    )
    assert created.status_code == 403
    assert created.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{url}/v1/messages/batches").json()["data"] == []  # nothing stored


def test_open_mode_serves_pages_of_this_machine(server: object) -> None:
    url = server.url  # type: ignore[attr-defined]
    listed = httpx.get(f"{url}/v1/messages/batches", headers={"origin": url})
    assert listed.status_code == 200, listed.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages/batches", {"requests": [mock_request("a")]}),
        ("/v1/messages", mock_request("a")["params"]),
        ("/v1/messages/count_tokens", {"model": "mock", "messages": []}),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_post_that_is_not_json_is_refused(
    server: object, path: str, body: object, content_type: str | None
) -> None:
    """A web page may send a text/plain or form POST to any address without asking first."""
    url = server.url  # type: ignore[attr-defined]
    headers = {"content-type": content_type} if content_type else {}
    reply = httpx.post(f"{url}{path}", content=json.dumps(body), headers=headers)
    assert reply.status_code == 415
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.headers["request-id"].startswith("req_")
    assert httpx.get(f"{url}/v1/messages/batches").json()["data"] == []  # nothing stored


def test_a_bodiless_post_may_omit_the_content_type(start_server: StartServer) -> None:
    """``curl -X POST …/cancel`` as the API's own examples write it."""
    url = start_server(engine=False).url  # the batch stays in progress
    with _client(url, "anything") as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
    reply = httpx.post(f"{url}/v1/messages/batches/{batch.id}/cancel")
    assert reply.status_code == 200, reply.text


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path}/x.db")
    yield opened
    await opened.close()


async def test_open_mode_is_decided_at_start_up_and_said_loudly(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="batchd"):
        assert await decide_open_mode(store, "127.0.0.1")
    assert "OPEN MODE" in caplog.text
    assert not await decide_open_mode(store, "0.0.0.0")
    await create_key(store, "a", "team-a")
    assert not await decide_open_mode(store, "127.0.0.1")


async def test_revoking_every_key_never_opens_a_running_server(store: Store) -> None:
    now = [0.0]
    key, secret = await create_key(store, "a", "team-a")
    open_mode = await decide_open_mode(store, "127.0.0.1")
    auth = Authenticator(store, open_mode=open_mode, clock=lambda: now[0])
    assert (await auth.caller(secret)).workspace == "team-a"

    await store.revoke_key(key.id, 1.0)
    now[0] += 3600

    with pytest.raises(AuthenticationFailed):
        await auth.caller(None)


async def test_a_key_created_while_open_closes_open_mode_for_good(store: Store) -> None:
    now = [0.0]
    auth = Authenticator(store, open_mode=True, clock=lambda: now[0])
    assert (await auth.caller(None)).operator
    key, _ = await create_key(store, "a", "team-a")
    now[0] += 3600
    with pytest.raises(AuthenticationFailed):
        await auth.caller(None)

    await store.revoke_key(key.id, 1.0)
    now[0] += 3600

    with pytest.raises(AuthenticationFailed):
        await auth.caller(None)


# --- operator keys -----------------------------------------------------------------------


def test_backend_status_needs_an_operator_key(tmp_path: Path, start_server: StartServer) -> None:
    db = tmp_path / "batchd.db"
    tenant = _create_key(db, "tenant", "team-a")
    operator = subprocess.run(
        [*BATCHD, "keys", "create", "ops", "--operator", "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    server = start_server()
    status = f"{server.url}/status/backends"
    refused = httpx.get(status, headers={"x-api-key": tenant})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    shown = httpx.get(status, headers={"x-api-key": operator})
    assert shown.status_code == 200
    assert "mock" in [b["name"] for b in shown.json()["data"]]
    listed = subprocess.run(
        [*BATCHD, "keys", "list", "--db", f"sqlite:///{db}"], capture_output=True, text=True
    ).stdout
    assert [line.split("\t")[-1] for line in listed.splitlines()] == ["active", "operator"]
