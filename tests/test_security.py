"""Secrets stay secret: keys are kept as hashes and compared in constant time, no key (a
client's or an upstream's) appears in any answer, log line, metric or console page, and
``results_url`` cannot be pointed at another host by a header."""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batchd.domain import ApiKey
from batchd.errors import AuthenticationFailed
from batchd.usecases.keys import Authenticator, hash_key
from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.keys import make_keys
from tests.support.process import run_batchd
from tests.support.server import serve_app

# --- keys: hashes, compared in constant time ----------------------------------------------


class _OneKeyStore:
    """The two store calls the Authenticator makes, answering one row whatever is asked."""

    def __init__(self, stored_hash: str) -> None:
        self.stored_hash = stored_hash

    async def count_active_keys(self) -> int:
        return 1

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:  # noqa: ARG002
        return ApiKey("key_1", "k", "team-a", 0.0, None), self.stored_hash


def authenticate(store: _OneKeyStore, presented: str) -> str:
    auth = Authenticator(store, open_mode=False)  # type: ignore[arg-type]
    return asyncio.run(auth.workspace(presented))


def test_a_row_whose_hash_differs_is_refused() -> None:
    """The row a lookup returns is checked again: a lenient index or collation lets no
    other key in."""
    store = _OneKeyStore(stored_hash=hash_key("sk-the-real-key"))

    with pytest.raises(AuthenticationFailed):
        authenticate(store, "sk-another-key")


def test_the_hash_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr("batchd.usecases.keys.hmac.compare_digest", spy)
    store = _OneKeyStore(stored_hash=hash_key("sk-the-real-key"))

    assert authenticate(store, "sk-the-real-key") == "team-a"
    assert compared == [(hash_key("sk-the-real-key"),) * 2]


# --- results_url ----------------------------------------------------------------------------

SPOOFS = [
    # a client, or a proxy passing it on, names another host
    pytest.param({"Host": "evil.example"}, id="host"),
    # the de-facto proxy headers
    pytest.param(
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}, id="x-forwarded"
    ),
    # RFC 7239
    pytest.param({"Forwarded": "host=evil.example;proto=https"}, id="forwarded"),
    # uvicorn trusts X-Forwarded-Proto from loopback: the scheme must not follow it either
    pytest.param({"X-Forwarded-Proto": "https", "X-Forwarded-Port": "443"}, id="proto-port"),
]


@pytest.fixture
def key(tmp_path: Path) -> str:
    """A key of the server's database (a server open without keys takes loopback Hosts only)."""
    return make_keys(tmp_path / "batchd.db", {"alice": "team-a"})["alice"]


@pytest.fixture
def ended_batch(start_server: StartServer, key: str) -> tuple[str, str]:
    """A server without public_url and an ended batch on it: (server url, batch id)."""
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key=key) as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        wait_ended(client, batch.id)
    return server.url, batch.id


@pytest.mark.parametrize("spoof", SPOOFS)
def test_results_url_ignores_host_and_forwarded_headers(
    ended_batch: tuple[str, str], key: str, spoof: dict[str, str]
) -> None:
    url, batch_id = ended_batch
    headers = {"x-api-key": key, **spoof}

    retrieved = httpx.get(f"{url}/v1/messages/batches/{batch_id}", headers=headers).json()
    listed = httpx.get(f"{url}/v1/messages/batches", headers=headers).json()["data"]

    expected = f"{url}/v1/messages/batches/{batch_id}/results"
    assert retrieved["results_url"] == expected
    assert [b["results_url"] for b in listed] == [expected]


@pytest.mark.parametrize("spoof", SPOOFS)
def test_a_configured_public_url_wins_over_every_header(
    start_server: StartServer, key: str, spoof: dict[str, str]
) -> None:
    server = start_server(public_url="https://batches.internal.example/")
    with anthropic.Anthropic(base_url=server.url, api_key=key) as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        wait_ended(client, batch.id)
    headers = {"x-api-key": key, **spoof}

    retrieved = httpx.get(f"{server.url}/v1/messages/batches/{batch.id}", headers=headers)

    assert retrieved.json()["results_url"] == (
        f"https://batches.internal.example/v1/messages/batches/{batch.id}/results"
    )


def test_the_sdk_follows_results_url_to_the_server_it_called(
    ended_batch: tuple[str, str], key: str
) -> None:
    url, batch_id = ended_batch
    localhost = url.replace("127.0.0.1", "localhost")  # a name, not the address bound

    with anthropic.Anthropic(base_url=localhost, api_key=key) as client:
        results = list(client.messages.batches.results(batch_id))

    assert [r.custom_id for r in results] == ["a"]


@pytest.mark.parametrize("path", ["/v1/messages/batches/", "/v1/models/", "/console/static"])
def test_no_redirect_takes_its_location_from_the_host_header(
    start_server: StartServer, key: str, path: str
) -> None:
    """Answered before any key check: a redirect built from ``Host`` would send a client
    (and, after a DNS rebinding, a browser) to the host the request named."""
    assert key  # the server has keys: the redirect came before the check
    server = start_server()

    reply = httpx.get(f"{server.url}{path}", headers={"host": "evil.example"})

    assert "location" not in reply.headers
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found_error"


# --- no key anywhere ------------------------------------------------------------------------


def _refusing_upstream(received: list[str]) -> Starlette:
    """An upstream that quotes the key it was sent when it refuses (some real ones do):
    model ``claude-deny`` is refused with 401, any other is answered."""

    async def messages(request: Request) -> JSONResponse:
        key = request.headers.get("x-api-key", "")
        received.append(key)
        params = json.loads(await request.body())
        if params["model"] == "claude-deny":
            error = {"type": "authentication_error", "message": f"Incorrect API key: {key}"}
            return JSONResponse({"type": "error", "error": error}, status_code=401)
        return JSONResponse(
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": params["model"],
                "content": [{"type": "text", "text": "fine"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        )

    routes = [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages, methods=["POST"]),
    ]
    return Starlette(routes=routes)


class Seen:
    """Every status line, header and body the test received, to search for secrets."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, response: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.texts.append(f"{response.status_code} {response.url}\n{headers}\n{response.text}")
        return response

    def containing(self, secret: str) -> list[str]:
        return [text[:200] for text in self.texts if secret in text]


def _calls(url: str, alice: str, bob: str, wrong: str, seen: Seen) -> None:
    """Every route, as alice, bob and a stranger, including the ones that fail upstream."""

    def call(method: str, path: str, key: str | None, body: Any = None) -> Any:
        headers = {"x-api-key": key} if key else {}
        response = httpx.request(method, f"{url}{path}", headers=headers, json=body, timeout=30)
        seen.add(response)
        return response.json() if response.headers["content-type"] == "application/json" else None

    deny = {"model": "claude-deny", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    requests = [
        {"custom_id": "denied", "params": deny},
        {"custom_id": "fine", "params": {**deny, "model": "claude-ok"}},
        mock_request("local"),
    ]
    batch = call("POST", "/v1/messages/batches", alice, {"requests": requests})
    with anthropic.Anthropic(base_url=url, api_key=alice) as client:
        wait_ended(client, batch["id"])
    batch_path = f"/v1/messages/batches/{batch['id']}"
    for method, path, body in [
        ("GET", batch_path, None),
        ("GET", "/v1/messages/batches", None),
        ("GET", f"{batch_path}/results", None),
        ("POST", f"{batch_path}/cancel", None),
        ("POST", "/v1/messages", deny),
        ("POST", "/v1/messages/count_tokens", {"model": "claude-deny", "messages": []}),
        ("POST", "/v1/messages/count_tokens", deny),
        ("GET", "/v1/models", None),
        ("GET", "/status/backends", None),
        ("GET", "/metrics", None),
        ("GET", f"/console/api/batches/{batch['id']}/errors", None),
        ("GET", "/console", None),
        ("GET", f"/console/batches/{batch['id']}", None),
        ("GET", "/console/static/console.js", None),
        ("GET", "/console/static/console.css", None),
        ("GET", "/openapi.json", None),
        ("GET", "/healthz", None),
        ("DELETE", batch_path, None),
    ]:
        for key in (alice, bob, wrong, None):
            call(method, path, key, body)


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    received: list[str] = []
    with serve_app(_refusing_upstream(received)) as running:
        yield running.url, received


def test_no_key_leaves_the_server(tmp_path: Path, upstream: tuple[str, list[str]]) -> None:
    upstream_url, received = upstream
    upstream_key = "sk-upstream-" + secrets.token_hex(16)
    config = tmp_path / "batchd.toml"
    config.write_text(
        "[[backends]]\n"
        'name = "upstream"\nkind = "anthropic"\n'
        f'base_url = "{upstream_url}"\n'
        'api_key_env = "BATCHD_TEST_UPSTREAM_KEY"\n'
        'models = ["claude-*"]\nmax_retries = 0\n'
    )
    keys = make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    wrong = "sk-wrong-" + secrets.token_hex(16)
    seen = Seen()
    env = {"BATCHD_TEST_UPSTREAM_KEY": upstream_key}

    with run_batchd(tmp_path, "--config", str(config), env=env, log_level="debug") as server:
        _calls(server.url, keys["alice"], keys["bob"], wrong, seen)
        log = server.log()

    assert set(received) == {upstream_key}  # the key was in play, and quoted back
    assert any("Incorrect API key: [redacted]" in text for text in seen.texts)
    for secret in (upstream_key, keys["alice"], keys["bob"], wrong):
        assert seen.containing(secret) == []
        assert secret not in log
        assert hash_key(secret) not in log
