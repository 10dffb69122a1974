"""API keys, workspaces and the open loopback mode, through the real CLI and SDK."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import StartServer, mock_request
from tests.support.server import RunningServer

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


def test_no_keys_on_loopback_means_open(server: RunningServer) -> None:
    url = server.url
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
