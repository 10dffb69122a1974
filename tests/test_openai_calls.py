"""POST /v1/chat/completions and /v1/embeddings driven by the official ``openai`` SDK against a
live batchd, on every backend kind: the mock, an OpenAI-compatible fake upstream, an
Anthropic-compatible one, and the transformers engines on tiny models built here."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from openai.types import CreateEmbeddingResponse
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionContentPartImageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from transformers import AutoModel, AutoTokenizer

from tests.conftest import StartServer
from tests.support.openai_upstream import EMBEDDING_WIDTH, FakeOpenAI, embedding_for, serve_openai
from tests.support.tiny_model import build_tiny_embedding_model, build_tiny_model
from tests.support.upstream import serve_upstream

Connect = Callable[..., openai.OpenAI]
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four"}]


@pytest.fixture
def connect(start_server: StartServer) -> Iterator[Connect]:
    """batchd with ``backends`` (the built-in mock always there); an ``openai`` client."""
    with ExitStack() as stack:

        def connect(*backends: dict[str, Any]) -> openai.OpenAI:
            server = start_server(backends=list(backends))
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)
            stack.callback(client.close)
            return client

        yield connect


def unit_length(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# -- the mock ----------------------------------------------------------------------------


def test_mock_chat_completion(connect: Connect) -> None:
    client = connect()
    completion = client.chat.completions.create(model="mock", messages=USER, max_tokens=3)
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "Mock reply: one"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_mock_chat_completion_streams_as_the_sdk_reads_it(connect: Connect) -> None:
    client = connect()
    whole = client.chat.completions.create(model="mock", messages=USER)
    stream = client.chat.completions.create(
        model="mock", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage == whole.usage


def test_mock_takes_sampling_it_has_no_use_for(connect: Connect) -> None:
    client = connect()
    completion = client.chat.completions.create(
        model="mock", messages=USER, temperature=1.5, top_p=0.5, seed=3
    )
    assert completion.choices[0].message.content == "Mock reply: one two three four"


def test_mock_tool_call_streams_its_arguments(connect: Connect) -> None:
    client = connect()
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "look", "parameters": {"type": "object"}},
    }
    stream = client.chat.completions.create(
        model="mock", messages=USER, tools=[tool], tool_choice="required", stream=True
    )
    chunks = list(stream)
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or ()]
    assert [(c.function.name, c.function.arguments) for c in calls if c.function] == [
        ("look", "{}")
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_mock_embeddings_by_the_sdks_default_base64(connect: Connect) -> None:
    client = connect()
    answer = client.embeddings.create(model="mock", input=["alpha", "beta", "alpha"])
    assert isinstance(answer, CreateEmbeddingResponse)
    vectors = [item.embedding for item in answer.data]
    assert [len(v) for v in vectors] == [16, 16, 16]
    assert vectors[0] == vectors[2] != vectors[1]
    assert unit_length(vectors[1]) == pytest.approx(1.0, abs=1e-5)


def test_mock_embeddings_as_floats_cut_to_dimensions(connect: Connect) -> None:
    client = connect()
    answer = client.embeddings.create(
        model="mock", input="alpha", encoding_format="float", dimensions=4
    )
    assert len(answer.data[0].embedding) == 4
    assert unit_length(answer.data[0].embedding) == pytest.approx(1.0)


BAD_CHAT = [
    # no messages
    pytest.param({"model": "mock"}, id="no-messages"),
    # messages is not a list
    pytest.param({"model": "mock", "messages": "hello"}, id="messages-string"),
    # no model
    pytest.param({"messages": USER}, id="no-model"),
    # stream is not a boolean
    pytest.param({"model": "mock", "messages": USER, "stream": "yes"}, id="stream-string"),
    # max_tokens is not a count
    pytest.param({"model": "mock", "messages": USER, "max_tokens": -1}, id="max-tokens-negative"),
    # a role nobody knows
    pytest.param({"model": "mock", "messages": [{"role": "x", "content": "y"}]}, id="bad-role"),
    # tool call arguments that are not JSON
    pytest.param(
        {
            "model": "mock",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            ],
        },
        id="bad-arguments",
    ),
    # two choices asked of a backend that answers one
    pytest.param({"model": "mock", "messages": USER, "n": 2}, id="n-2"),
]


@pytest.mark.parametrize("body", BAD_CHAT)
def test_bad_chat_bodies_are_400(connect: Connect, body: dict[str, Any]) -> None:
    client = connect()
    with pytest.raises(openai.BadRequestError):
        client.post("/chat/completions", body=body, cast_to=ChatCompletion)


BAD_EMBEDDINGS = [
    pytest.param({"model": "mock"}, id="no-input"),
    pytest.param({"model": "mock", "input": []}, id="empty-list"),
    pytest.param({"model": "mock", "input": ""}, id="empty-string"),
    pytest.param({"model": "mock", "input": [{"text": "x"}]}, id="object-input"),
    pytest.param({"model": "mock", "input": "x", "encoding_format": "int8"}, id="bad-format"),
    pytest.param({"model": "mock", "input": "x", "dimensions": 0}, id="zero-dimensions"),
    pytest.param({"model": "mock", "input": "x", "stream": True}, id="stream"),
]


@pytest.mark.parametrize("body", BAD_EMBEDDINGS)
def test_bad_embeddings_bodies_are_400(connect: Connect, body: dict[str, Any]) -> None:
    client = connect()
    with pytest.raises(openai.BadRequestError):
        client.post("/embeddings", body=body, cast_to=CreateEmbeddingResponse)


def test_a_body_that_is_not_json_is_400(connect: Connect) -> None:
    client = connect()
    with pytest.raises(openai.BadRequestError):
        client.post(
            "/chat/completions",
            content=b"{not json",
            options={"headers": {"content-type": "application/json"}},
            cast_to=ChatCompletion,
        )


def test_a_model_nobody_serves_is_404(connect: Connect) -> None:
    client = connect()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=USER)


# -- an OpenAI-compatible upstream: the body as it came ---------------------------------


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with serve_openai() as fake:
        yield fake


def openai_backend(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "name": "up",
        "kind": "openai",
        "base_url": fake.url,
        "models": ["up-*"],
        "max_retries": 0,
        **extra,
    }


def test_openai_kind_gets_the_body_unchanged(connect: Connect, fake_openai: FakeOpenAI) -> None:
    client = connect(openai_backend(fake_openai))
    extra = {"seed": 7, "logit_bias": {"12": -100}, "vendor_option": {"x": [1, 2]}}
    completion = client.chat.completions.create(
        model="up-chat", messages=USER, max_tokens=2, extra_body=extra
    )
    assert completion.choices[0].message.content == "one two"
    (received,) = fake_openai.requests()
    assert received.body == {"model": "up-chat", "messages": USER, "max_tokens": 2, **extra}


def test_openai_kind_streams_without_streaming_upstream(
    connect: Connect, fake_openai: FakeOpenAI
) -> None:
    client = connect(openai_backend(fake_openai))
    stream = client.chat.completions.create(model="up-chat", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "one two three four"
    (received,) = fake_openai.requests()
    assert "stream" not in received.body


def test_openai_kind_sends_the_upstream_model_and_answers_the_clients(
    connect: Connect, fake_openai: FakeOpenAI
) -> None:
    client = connect(openai_backend(fake_openai, upstream_model="served-name"))
    completion = client.chat.completions.create(model="up-chat", messages=USER)
    assert completion.model == "up-chat"
    assert fake_openai.requests()[0].body["model"] == "served-name"


def test_openai_kind_embeddings(connect: Connect, fake_openai: FakeOpenAI) -> None:
    client = connect(openai_backend(fake_openai))
    answer = client.embeddings.create(model="up-embed", input=["a b", "c"])
    assert answer.data[0].embedding == pytest.approx(embedding_for("a b"))
    assert answer.data[1].embedding == pytest.approx(embedding_for("c"))
    assert len(answer.data[0].embedding) == EMBEDDING_WIDTH
    assert fake_openai.requests("/embeddings")[0].body["encoding_format"] == "base64"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        pytest.param("http://169.254.169.254/latest/meta-data", "169.254.169.254", id="metadata"),
        pytest.param("http://localhost:8080/admin", "localhost", id="localhost"),
    ],
)
def test_openai_kind_is_not_sent_an_internal_url(
    connect: Connect, fake_openai: FakeOpenAI, url: str, host: str
) -> None:
    client = connect(openai_backend(fake_openai))
    part: ChatCompletionContentPartImageParam = {"type": "image_url", "image_url": {"url": url}}
    with pytest.raises(openai.BadRequestError, match=host):
        client.chat.completions.create(
            model="up-chat", messages=[{"role": "user", "content": [part]}]
        )
    assert fake_openai.requests() == []


def test_openai_kind_upstream_refusal_reaches_the_client(connect: Connect) -> None:
    with serve_openai(errors={"refuse me": (400, "no thanks")}) as fake:
        client = connect(openai_backend(fake))
        with pytest.raises(openai.BadRequestError, match="no thanks"):
            client.chat.completions.create(
                model="up-chat", messages=[{"role": "user", "content": "refuse me"}]
            )


# -- an Anthropic-compatible upstream: chat -> Messages -> chat -------------------------


@pytest.fixture
def anthropic_client(connect: Connect) -> Iterator[openai.OpenAI]:
    with serve_upstream() as upstream:
        yield connect(
            {"name": "claude", "kind": "anthropic", "base_url": upstream.url, "models": ["c-*"]}
        )


def test_anthropic_kind_chat(anthropic_client: openai.OpenAI) -> None:
    completion = anthropic_client.chat.completions.create(
        model="c-1",
        messages=[{"role": "system", "content": "Be brief."}, *USER],
        max_completion_tokens=3,
    )
    assert completion.model == "c-1"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_anthropic_kind_stop_sequence(anthropic_client: openai.OpenAI) -> None:
    completion = anthropic_client.chat.completions.create(
        model="c-1", messages=[{"role": "user", "content": "alpha STOP beta"}], stop="STOP"
    )
    assert completion.choices[0].finish_reason == "stop"
    assert "beta" not in (completion.choices[0].message.content or "")


def test_anthropic_kind_streams(anthropic_client: openai.OpenAI) -> None:
    whole = anthropic_client.chat.completions.create(model="c-1", messages=USER)
    stream = anthropic_client.chat.completions.create(model="c-1", messages=USER, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == whole.choices[0].message.content


def test_anthropic_kind_has_no_embeddings(anthropic_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="chat only"):
        anthropic_client.embeddings.create(model="c-1", input="x")


def test_anthropic_kind_refuses_what_messages_cannot_carry(
    anthropic_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError, match="temperature"):
        anthropic_client.chat.completions.create(model="c-1", messages=USER, temperature=1.5)


# -- transformers: chat rendered natively, embeddings in process ------------------------


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedding_model(tmp_path_factory.mktemp("tiny-encoder"))


def local_backend(name: str, directory: Path) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "transformers",
        "model_path": str(directory),
        "models": [name],
        "max_batch_size": 8,
    }


def reference_embeddings(directory: Path, texts: list[str], pooling: str) -> list[list[float]]:
    """The library on its own, one text at a time: pooled and scaled to unit length."""
    tokenizer: Any = AutoTokenizer.from_pretrained(directory)
    model: Any = AutoModel.from_pretrained(directory)
    vectors = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.inference_mode():
            hidden = model(input_ids=ids).last_hidden_state[0]
        vector = hidden.mean(dim=0) if pooling == "mean" else hidden[-1]
        vectors.append((vector / vector.norm()).tolist())
    return vectors


TEXTS = ["the model", "a batch of token prompt engine request", "cache"]


def test_transformers_encoder_embeddings_match_the_library(
    connect: Connect, encoder_dir: Path
) -> None:
    client = connect(local_backend("enc", encoder_dir))
    answer = client.embeddings.create(model="enc", input=TEXTS, encoding_format="float")
    expected = reference_embeddings(encoder_dir, TEXTS, "mean")
    for got, want in zip([d.embedding for d in answer.data], expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert answer.usage.prompt_tokens > len(TEXTS)


def test_transformers_decoder_embeddings_pool_the_last_token(
    connect: Connect, llama_dir: Path
) -> None:
    client = connect(local_backend("llama", llama_dir))
    answer = client.embeddings.create(model="llama", input=TEXTS)
    expected = reference_embeddings(llama_dir, TEXTS, "last")
    for got, want in zip([d.embedding for d in answer.data], expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


def test_transformers_chat_matches_the_messages_answer(connect: Connect, llama_dir: Path) -> None:
    client = connect(local_backend("llama", llama_dir))
    completion = client.chat.completions.create(
        model="llama", messages=USER, max_tokens=6, temperature=0
    )
    streamed = client.chat.completions.create(
        model="llama", messages=USER, max_tokens=6, temperature=0, stream=True
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 6
    assert completion.choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert text == completion.choices[0].message.content


def test_an_encoder_does_not_chat(connect: Connect, encoder_dir: Path) -> None:
    client = connect(local_backend("enc", encoder_dir))
    with pytest.raises(openai.BadRequestError, match="embeddings only"):
        client.chat.completions.create(model="enc", messages=USER)


def test_token_ids_past_the_vocabulary_are_400(connect: Connect, encoder_dir: Path) -> None:
    client = connect(local_backend("enc", encoder_dir))
    with pytest.raises(openai.BadRequestError, match="token ids"):
        client.embeddings.create(model="enc", input=[[1, 2, 10**6]])


SCRIPT_PROCESSOR = "tests.support.scripted:scripted"  # forces the answer a prompt scripts
LOOKUP_FUNCTION: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object"}},
}


def test_transformers_chat_reads_tool_calls_as_tool_choice_allows(
    connect: Connect, llama_dir: Path
) -> None:
    scripted = {"tool_call_format": "hermes", "logits_processors": [SCRIPT_PROCESSOR]}
    client = connect({**local_backend("llama", llama_dir), **scripted})
    call = '<tool_call>{"name": "lookup", "arguments": {"word": "cache"}}</tool_call>'
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"SCRIPT:{call}"}]
    create = functools.partial(
        client.chat.completions.create,
        model="llama",
        messages=messages,
        tools=[LOOKUP_FUNCTION],
        max_tokens=200,
        temperature=0,
    )
    called, text = create(), create(tool_choice="none")
    assert called.choices[0].finish_reason == "tool_calls"
    [tool_call] = called.choices[0].message.tool_calls or []
    assert tool_call.type == "function"
    assert tool_call.function.name == "lookup"
    assert json.loads(tool_call.function.arguments) == {"word": "cache"}
    assert text.choices[0].message.content == call
    assert not text.choices[0].message.tool_calls
