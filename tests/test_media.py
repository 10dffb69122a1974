"""Which image and document URLs a backend may be asked to fetch (batchd.backends.media)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types import ImageBlockParam
from anthropic.types.messages import MessageBatchErroredResult
from anthropic.types.messages.batch_create_params import Request

from batchd.backends.media import UrlPolicy, chat_url_sources, url_sources
from batchd.errors import InvalidRequest
from batchd.validation import check_params
from tests.conftest import StartServer, mock_request, wait_ended

DEFAULT = UrlPolicy()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "file:///etc/passwd",  # not http(s)
        "ftp://images.example.com/a.png",  # not http(s)
        "gopher://images.example.com/",  # not http(s)
        "http://127.0.0.1:8000/v1/messages/batches",  # loopback
        "http://localhost/a.png",  # loopback by name
        "http://printer.localhost/a.png",  # under .localhost
        "http://10.0.0.5/admin",  # private
        "http://192.168.1.1/",  # private
        "http://[::1]/a.png",  # IPv6 loopback
        "http://[fe80::1]/a.png",  # IPv6 link-local
        "http://[::ffff:10.0.0.1]/a.png",  # IPv4-mapped private
        "http://127.1/a.png",  # a short IPv4 spelling HTTP clients accept
        "http://2130706433/a.png",  # 127.0.0.1 as one number
        "http://0x7f.0.0.1/a.png",  # hexadecimal
        "http://metadata/computeMetadata/v1/",  # a single-label (search-domain) name
        "http://db.internal/",  # under .internal
        "http:///a.png",  # no host
    ],
)
def test_the_default_policy_refuses_internal_and_non_http_urls(url: str) -> None:
    assert DEFAULT.problem(url) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://images.example.com/cat.png",  # a public name
        "http://93.184.215.14/a.png",  # a public address
        "https://1password.com/logo.png",  # a name starting with a digit
    ],
)
def test_the_default_policy_allows_public_http_urls(url: str) -> None:
    assert DEFAULT.problem(url) is None


def test_an_allow_list_admits_only_its_hosts_internal_ones_included() -> None:
    policy = UrlPolicy(("*.cdn.example", "10.0.0.5"))
    assert policy.problem("https://a.cdn.example/x.png") is None
    assert policy.problem("http://10.0.0.5/x.png") is None
    assert policy.problem("https://images.example.com/x.png") is not None
    assert policy.problem("file://10.0.0.5/x.png") is not None
    assert UrlPolicy(()).problem("https://a.cdn.example/x.png") is not None


def _image(url: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "url", "url": url}}


def test_url_sources_are_found_in_tool_results_and_documents() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "tool_result", "tool_use_id": "t", "content": [_image("http://a.example/1")]},
        {
            "type": "document",
            "source": {"type": "content", "content": [_image("http://a.example/2")]},
        },
        {"type": "document", "source": {"type": "url", "url": "http://a.example/3.pdf"}},
    ]
    raw = mock_request("a", text="x")["params"] | {
        "messages": [{"role": "user", "content": content}]
    }
    params = check_params(httpx.Request("POST", "/", json=raw).content)

    found = dict(url_sources(params))

    assert sorted(found.values()) == [
        "http://a.example/1",
        "http://a.example/2",
        "http://a.example/3.pdf",
    ]
    assert "messages.0.content.1.content.0.source.url" in found


def _with_image(custom_id: str, url: str) -> Request:
    image: ImageBlockParam = {"type": "image", "source": {"type": "url", "url": url}}
    return mock_request(custom_id, [image, {"type": "text", "text": "what is it?"}])


def test_chat_url_sources_are_the_parts_fetched_by_url() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "no parts"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://a.example/x.png"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "video_url", "video_url": {"url": "http://10.0.0.5/v.mp4"}},
                    {"type": "audio_url", "audio_url": "http://b.example/a.wav"},
                ],
            },
        ]
    }
    assert list(chat_url_sources(body)) == [
        ("messages.1.content.1.image_url.url", "https://a.example/x.png"),
        ("messages.1.content.3.video_url.url", "http://10.0.0.5/v.mp4"),
        ("messages.1.content.4.audio_url.url", "http://b.example/a.wav"),
    ]
    with pytest.raises(InvalidRequest, match=r"messages\.1\.content\.3\.video_url\.url"):
        UrlPolicy().check_chat(body)


def test_a_batch_request_with_an_internal_url_is_errored_alone(start_server: StartServer) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(
            requests=[
                _with_image("metadata", "http://169.254.169.254/latest/meta-data/"),
                _with_image("public", "https://images.example.com/cat.png"),
            ]
        )
        wait_ended(client, batch.id)
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["public"].type == "succeeded"
    refused = results["metadata"]
    assert isinstance(refused, MessageBatchErroredResult)
    assert refused.error.error.type == "invalid_request_error"
    assert "169.254.169.254" in refused.error.error.message


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_an_interactive_call_with_a_file_url_is_refused(
    start_server: StartServer, path: str
) -> None:
    server = start_server()
    params = _with_image("a", "file:///etc/passwd")["params"]
    reply = httpx.post(f"{server.url}{path}", json=params, headers={"x-api-key": "k"})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert "messages.0.content.0.source.url" in reply.json()["error"]["message"]


def test_a_backend_allow_list_admits_an_internal_image_host(start_server: StartServer) -> None:
    backend = {
        "name": "mock",
        "kind": "mock",
        "models": ["mock"],
        "allowed_url_hosts": ["10.0.0.5"],
    }
    server = start_server(backends=[backend])
    allowed = _with_image("a", "http://10.0.0.5/cat.png")["params"]
    other = _with_image("a", "https://images.example.com/cat.png")["params"]
    headers = {"x-api-key": "k"}
    assert httpx.post(f"{server.url}/v1/messages", json=allowed, headers=headers).status_code == 200
    assert httpx.post(f"{server.url}/v1/messages", json=other, headers=headers).status_code == 400
