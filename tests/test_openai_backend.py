"""The openai backend end to end: the anthropic SDK -> batchd -> a fake OpenAI-compatible server."""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import ImageBlockParam, ToolParam

from batchd.backends.openai import api_base, server_root
from batchd.config import BackendConfig
from tests.conftest import StartServer, body_of, wait_ended
from tests.support.openai_upstream import FakeOpenAI, serve_openai, tokenize_count
from tests.support.pdf import pdf_base64
from tests.support.upstream import count_tokens_answer, serve_upstream

MODEL = "local-chat"
KEY_ENV = "BATCHD_TEST_OPENAI_KEY"
KEY = "sk-local-123"
PNG = "iVBORw0KGgo="

Connect = Callable[..., tuple[anthropic.Anthropic, FakeOpenAI]]


@pytest.fixture
def connect(start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Connect]:
    """Start a fake OpenAI server, then batchd routing ``local-*`` to it; return an SDK client.

    ``prefix`` mounts the fake under a path, ``suffix`` is appended to the backend's
    base_url, ``backend`` overrides the backend table; other keywords go to the fake.
    """
    monkeypatch.setenv(KEY_ENV, KEY)
    with ExitStack() as stack:

        def connect(
            *,
            prefix: str = "",
            suffix: str = "",
            backend: dict[str, Any] | None = None,
            **fake_options: Any,
        ) -> tuple[anthropic.Anthropic, FakeOpenAI]:
            fake_options.setdefault("api_key", KEY)
            fake = stack.enter_context(serve_openai(prefix=prefix, **fake_options))
            table = {
                "name": "local",
                "kind": "openai",
                "base_url": fake.url + prefix + suffix,
                "api_key_env": KEY_ENV,
                "models": ["local-*"],
                "max_retries": 1,
                "timeout_seconds": 5,
                **(backend or {}),
            }
            server = start_server(backends=[table])
            client = anthropic.Anthropic(base_url=server.url, api_key="sk-test")
            stack.callback(client.close)
            return client, fake

        yield connect


def request(custom_id: str, content: Any, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": content}]}
    return {"custom_id": custom_id, "params": {**body, **params}}


def run_batch(client: anthropic.Anthropic, requests: list[dict[str, Any]]) -> dict[str, Any]:
    # content of any shape, some of it refused by batchd: sent as it is, past the SDK's types
    batch = client.messages.batches.create(requests=[], extra_body={"requests": requests})
    wait_ended(client, batch.id, timeout=30)
    return {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}


def tool(name: str) -> ToolParam:
    return {"name": name, "input_schema": {"type": "object", "properties": {}}}


def test_a_batch_of_text_tools_and_images(connect: Connect) -> None:
    client, fake = connect()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    results = run_batch(
        client,
        [
            request("text", "Hello there"),
            request("any", "Weather in Oslo", tools=[tool("weather")], tool_choice={"type": "any"}),
            request(
                "named",
                "What time is it",
                tools=[tool("weather"), tool("clock")],
                tool_choice={"type": "tool", "name": "clock"},
            ),
            request("image", [image, {"type": "text", "text": "Describe this"}]),
            request("long", "one two three four five", max_tokens=3),
            request("stop", "count 1 2 STOP 3", stop_sequences=["STOP"]),
        ],
    )
    outcome = {cid: r.message for cid, r in results.items() if r.type == "succeeded"}
    assert sorted(outcome) == ["any", "image", "long", "named", "stop", "text"]
    summary = {
        cid: (
            [(b.text if b.type == "text" else (b.name, b.input)) for b in m.content],
            m.stop_reason,
            m.stop_sequence,
        )
        for cid, m in outcome.items()
    }
    assert summary == {
        "text": (["Hello there"], "end_turn", None),
        "any": ([("weather", {"query": "Weather in Oslo"})], "tool_use", None),
        "named": ([("clock", {"query": "What time is it"})], "tool_use", None),
        "image": (["Describe this"], "end_turn", None),
        "long": (["one two three"], "max_tokens", None),
        "stop": (["count 1 2 "], "stop_sequence", "STOP"),
    }
    assert all(b.id.startswith("toolu_") for b in outcome["any"].content if b.type == "tool_use")
    sent_image = fake.bodies()["Describe this"]["messages"][0]["content"][0]
    assert sent_image == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("", ""),  # base_url is the server's origin: /v1 is appended
        ("/proxy/openai", ""),  # a path prefix is kept
        ("", "/v1"),  # base_url that already ends with /v1 (Ollama's documented form)
    ],
)
def test_upstream_model_and_bearer_key_are_sent(connect: Connect, prefix: str, suffix: str) -> None:
    client, fake = connect(prefix=prefix, suffix=suffix, backend={"upstream_model": "qwen-0.5b"})
    message = client.messages.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )
    [sent] = fake.requests()
    assert (sent.body["model"], sent.authorization) == ("qwen-0.5b", f"Bearer {KEY}")
    assert (message.model, message.content[0].type) == (MODEL, "text")


def test_openai_errors_become_errored_results(connect: Connect) -> None:
    client, fake = connect(
        errors={
            "too long": (400, "max_tokens is too large for this model"),
            "who": (404, "The model `qwen` does not exist."),
            "busy": (429, "Too many requests"),
        }
    )
    prompts = {"bad": "too long", "gone": "who", "busy": "busy"}
    results = run_batch(client, [request(cid, prompt) for cid, prompt in prompts.items()])
    errors = {
        cid: (r.type, r.error.error.type, r.error.error.message) for cid, r in results.items()
    }
    assert errors == {
        "bad": ("errored", "invalid_request_error", "max_tokens is too large for this model"),
        "gone": ("errored", "not_found_error", "The model `qwen` does not exist."),
        "busy": ("errored", "rate_limit_error", "Too many requests"),
    }
    calls = Counter(r.body["messages"][0]["content"] for r in fake.requests())
    assert calls == {"too long": 1, "who": 1, "busy": 2}  # only the 429 is retried (once)


def test_a_wrong_upstream_key_is_the_servers_fault_in_results(connect: Connect) -> None:
    client, _ = connect(api_key="sk-other")
    results = run_batch(client, [request("r", "Hi")])
    error = results["r"].error.error
    assert (results["r"].type, error.type) == ("errored", "api_error")
    assert "refused batchd's upstream credentials" in error.message


def test_a_wrong_upstream_key_is_the_servers_fault_for_a_caller(connect: Connect) -> None:
    client, _ = connect(api_key="sk-other")
    with pytest.raises(anthropic.InternalServerError) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        )
    assert (raised.value.status_code, raised.value.type) == (500, "api_error")
    assert raised.value.response.headers["x-should-retry"] == "false"


def test_an_upstream_422_reaches_a_caller_as_a_400(connect: Connect) -> None:
    client, _ = connect(errors={"odd": (422, "max_tokens: must be positive")})
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.with_options(max_retries=0).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "odd"}]
        )
    assert raised.value.status_code == 400
    assert body_of(raised.value)["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: must be positive",
    }


def test_an_unsupported_document_source_is_errored_without_calling_upstream(
    connect: Connect,
) -> None:
    client, fake = connect()
    doc = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
    results = run_batch(client, [request("doc", [doc, {"type": "text", "text": "Summarise"}])])
    error = results["doc"].error.error
    assert (results["doc"].type, error.type) == ("errored", "invalid_request_error")
    assert "a document with source 'url'" in error.message
    assert fake.requests() == []


def test_a_pdf_is_sent_as_its_text(connect: Connect) -> None:
    client, fake = connect()
    data = pdf_base64("Quarterly revenue rose 12 percent")
    doc = {
        "type": "document",
        "title": "Q3",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    results = run_batch(client, [request("pdf", [doc, {"type": "text", "text": "Summarise"}])])
    assert results["pdf"].type == "succeeded"
    [sent] = fake.requests()
    assert sent.body["messages"][0]["content"][0] == {
        "type": "text",
        "text": "[PDF document 'Q3', text extracted by batchd]\nQuarterly revenue rose 12 percent",
    }


def test_a_tool_call_round_trips_through_the_messages_api(connect: Connect) -> None:
    client, fake = connect()
    ask: Any = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=ask,
        tools=[tool("weather")],
        tool_choice={"type": "any"},
    )
    [use] = first.content
    assert use.type == "tool_use"
    turns: Any = [
        *ask,
        {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 C"}],
        },
    ]
    second = client.messages.create(
        model=MODEL, max_tokens=64, messages=turns, tools=[tool("weather")]
    )
    assert second.stop_reason == "end_turn"
    sent = fake.requests()[1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == use.id
    assert sent[2] == {"role": "tool", "tool_call_id": use.id, "content": "3 C"}


def test_count_tokens_asks_the_upstream_tokenizer(connect: Connect) -> None:
    client, fake = connect(backend={"upstream_model": "qwen-0.5b"})
    counted = client.messages.count_tokens(
        model=MODEL, system="Be brief", messages=[{"role": "user", "content": "one two three"}]
    )
    [sent] = fake.requests("/tokenize")
    assert sent.body == {
        "model": "qwen-0.5b",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "one two three"},
        ],
    }
    assert counted.input_tokens == tokenize_count(sent.body["messages"]) == 11


def test_count_tokens_estimates_without_a_tokenizer(connect: Connect) -> None:
    client, _ = connect(tokenize=False)
    image: ImageBlockParam = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    counted = client.messages.count_tokens(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "a" * 400}, image]}],
    )
    # (400 characters + 4 of the role "user") / 4, plus 1000 for the image, 3 for the
    # message's markers and 3 for the reply's header
    assert counted.input_tokens == 101 + 1000 + 3 + 3


def test_count_tokens_is_forwarded_to_an_anthropic_upstream(start_server: StartServer) -> None:
    with serve_upstream() as upstream:
        table = {
            "name": "up",
            "kind": "anthropic",
            "base_url": upstream.url,
            "models": ["claude-*"],
        }
        server = start_server(backends=[table])
        with anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client:
            counted = client.messages.count_tokens(
                model="claude-x", messages=[{"role": "user", "content": "how many"}]
            )
    assert counted.input_tokens == count_tokens_answer("how many")


def test_count_tokens_on_the_mock_is_an_estimate(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(
        model="mock", messages=[{"role": "user", "content": "b" * 40}]
    )
    assert counted.input_tokens == 11 + 3 + 3  # (40 + len("user")) / 4, markers, header


def test_count_tokens_for_an_unknown_model_is_404(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError, match="not served here"):
        client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])


def test_count_tokens_needs_messages(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        client.messages.count_tokens(model="mock", messages=[])


@pytest.mark.parametrize(
    ("base_url", "api", "root"),
    [
        ("http://h:8000", "http://h:8000/v1", "http://h:8000"),  # vLLM: the origin
        ("http://h:8000/", "http://h:8000/v1", "http://h:8000"),  # a trailing slash
        ("http://h/a/b", "http://h/a/b/v1", "http://h/a/b"),  # a path prefix is kept
        ("http://h:11434/v1", "http://h:11434/v1", "http://h:11434"),  # Ollama's /v1: not doubled
        ("http://h/v1/", "http://h/v1", "http://h"),  # /v1 with a trailing slash
    ],
)
def test_url_rules(base_url: str, api: str, root: str) -> None:
    assert (api_base(base_url), server_root(base_url)) == (api, root)


def test_the_readme_openai_configs_load() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    configs = [
        BackendConfig(**tomllib.loads(block)["backends"][0])
        for block in blocks
        if 'kind = "openai"' in block
    ]
    assert [(c.name, f"{api_base(c.base_url or '')}/chat/completions") for c in configs] == [
        ("vllm", "http://127.0.0.1:8001/v1/chat/completions"),
        ("ollama", "http://127.0.0.1:11434/v1/chat/completions"),
    ]
