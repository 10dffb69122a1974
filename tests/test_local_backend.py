"""kind = "transformers" end to end: a tiny model built here, loaded from its directory like
any real model, serving batches through the anthropic SDK against a live batchd."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from batchd.backends.base import CALL_PRIORITY, OPENAI_CHAT
from batchd.backends.local.backend import LocalBackend
from batchd.backends.local.generation import Finish, Generated, Job
from batchd.config import BackendConfig
from tests.conftest import StartServer, wait_ended
from tests.support.tiny_model import build_tiny_model

MODEL = "tiny-llama"
SYSTEM = "You answer in the model batch token style."


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> Reference:
    return Reference(model_dir)


class Reference:
    """The library on its own, one prompt at a time: the oracle for batchd's answers."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.model: Any = AutoModelForCausalLM.from_pretrained(model_dir)

    def prompt(self, params: dict[str, Any]) -> list[int]:
        messages = [{"role": "system", "content": params["system"]}] if "system" in params else []
        messages += params["messages"]
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def greedy(self, params: dict[str, Any]) -> list[int]:
        prompt = self.prompt(params)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([prompt]), max_new_tokens=params["max_tokens"], do_sample=False
            )
        generated: list[int] = out[0, len(prompt) :].tolist()
        return generated


@pytest.fixture
def connect(start_server: StartServer, model_dir: Path) -> Iterator[Any]:
    def start(directory: Path = model_dir, **backend: Any) -> anthropic.Anthropic:
        table = {
            "name": "local",
            "kind": "transformers",
            "model_path": str(directory),
            "models": [MODEL],
            "max_concurrency": 64,
            "max_batch_size": 32,
            **backend,
        }
        server = start_server(backends=[table])
        client = anthropic.Anthropic(base_url=server.url, api_key="sk-test")
        clients.append(client)
        return client

    clients: list[anthropic.Anthropic] = []
    yield start
    for client in clients:
        client.close()


def params(i: int, **extra: Any) -> dict[str, Any]:
    words = " ".join(["the model batch token"] * (1 + i % 5))
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 1 + i % 24,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"{words} {i}"}],
    }
    if i % 3 == 0:
        body["system"] = SYSTEM
    if i % 4 == 0:
        body["messages"] = [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            *body["messages"],
        ]
    return {**body, **extra}


def create(client: anthropic.Anthropic, body: dict[str, Any]) -> Any:
    """messages.create with the sampling keys (which this SDK no longer names) as extra body."""
    sampling = {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}
    rest = {k: v for k, v in body.items() if k not in sampling}
    return client.messages.create(**rest, extra_body=sampling)


def run_batch(client: anthropic.Anthropic, bodies: list[dict[str, Any]]) -> list[Any]:
    requests = [{"custom_id": f"r{i}", "params": body} for i, body in enumerate(bodies)]
    # the sampling keys are keys this SDK's params no longer name: sent as extra body
    batch = client.messages.batches.create(requests=[], extra_body={"requests": requests})
    wait_ended(client, batch.id, timeout=90)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    return [results[f"r{i}"] for i in range(len(bodies))]


def test_a_batch_of_300_succeeds_with_the_tokenizers_counts(
    connect: Any, reference: Reference
) -> None:
    client = connect()
    bodies = [params(i) if i % 2 else params(i, temperature=0.8, top_k=20) for i in range(300)]
    results = run_batch(client, bodies)
    assert [r.type for r in results] == ["succeeded"] * 300
    for body, result in zip(bodies, results, strict=True):
        usage, message = result.message.usage, result.message
        cached = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
        assert usage.input_tokens + cached == len(reference.prompt(body))
        assert 1 <= usage.output_tokens <= body["max_tokens"]
        if message.stop_reason == "max_tokens":
            assert usage.output_tokens == body["max_tokens"]
        else:  # the end-of-turn token, possibly as the last token allowed
            assert message.stop_reason == "end_turn"
    for body, result in list(zip(bodies, results, strict=True))[1:40:2]:  # greedy ones
        expected = reference.greedy(body)
        assert result.message.usage.output_tokens == len(expected)
        text = reference.tokenizer.decode(expected, skip_special_tokens=True)
        assert result.message.content[0].text == text


def test_a_long_shared_system_prompt_is_computed_once_with_the_same_answers(
    connect: Any, reference: Reference, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="batchd.backends.local.transformers_engine")
    client = connect()
    system = " ".join(["the system prompt is long and shared"] * 12)
    bodies = [params(i, system=system, max_tokens=12) for i in range(40)]
    results = run_batch(client, bodies)
    shared = [int(m[1]) for m in re.finditer(r"(\d+) prefix tokens shared", caplog.text)]
    assert max(shared) > len(reference.tokenizer(system)["input_ids"])
    for body, result in list(zip(bodies, results, strict=True))[::5]:
        expected = reference.greedy(body)
        text = reference.tokenizer.decode(expected, skip_special_tokens=True)
        assert result.message.content[0].text == text


def test_max_tokens_is_honoured(connect: Any) -> None:
    client = connect()
    message = create(client, params(7, max_tokens=5))
    assert (message.stop_reason, message.usage.output_tokens) == ("max_tokens", 5)


def test_stop_sequence_cuts_the_text(connect: Any) -> None:
    client = connect()
    free = create(client, params(2, max_tokens=40))
    text = free.content[0].text
    # an ASCII run from past the start of the text, whose first occurrence is there
    stop = next(m[0] for m in re.finditer(r"[a-z]{2,4}", text) if m.start() > 0)
    stopped = create(client, params(2, max_tokens=40, stop_sequences=["zzzz", stop]))
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == stop
    assert stopped.content[0].text == text[: text.index(stop)]
    assert stopped.usage.output_tokens < free.usage.output_tokens


def test_temperature_zero_gives_the_same_text_twice(connect: Any) -> None:
    client = connect()
    body = params(11, max_tokens=24)
    first = run_batch(client, [body, params(1), params(5)])[0]
    second = run_batch(client, [params(3), body])[1]
    assert first.message.content[0].text == second.message.content[0].text
    assert first.message.usage.output_tokens == 24


def test_end_of_turn_token_ends_the_turn(
    connect: Any, model_dir: Path, reference: Reference, tmp_path: Path
) -> None:
    body = params(8, max_tokens=24)
    first, second = reference.greedy(body)[:2]
    # the same model, declaring the second token it will generate as an end-of-turn token
    directory = Path(shutil.copytree(model_dir, tmp_path / "model"))
    config = json.loads((directory / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], second]
    (directory / "generation_config.json").write_text(json.dumps(config))
    client = connect(directory)
    message = create(client, body)
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.output_tokens == 2
    assert message.content[0].text == reference.tokenizer.decode([first])


def test_count_tokens_uses_the_models_tokenizer(connect: Any, reference: Reference) -> None:
    client = connect()
    body = params(4, system=SYSTEM)
    counted = client.messages.count_tokens(
        model=MODEL, system=SYSTEM, messages=body["messages"]
    ).input_tokens
    created = create(client, body)
    assert counted == created.usage.input_tokens == len(reference.prompt(body))


def test_tools_are_rendered_by_the_template(connect: Any, reference: Reference) -> None:
    client = connect()
    tool = {"name": "lookup", "description": "find a word", "input_schema": {"type": "object"}}
    body = params(1)
    without = client.messages.count_tokens(model=MODEL, messages=body["messages"])
    with_tool = client.messages.count_tokens(
        model=MODEL,
        messages=body["messages"],
        tools=[tool],
    )
    listed = json.dumps({"type": "function", "function": {"name": "lookup"}})
    assert with_tool.input_tokens > without.input_tokens + len(
        reference.tokenizer(listed)["input_ids"]
    )


def test_an_image_is_refused_as_an_invalid_request(connect: Any) -> None:
    client = connect()
    image = {"type": "image", "source": {"type": "url", "url": "http://example.invalid/a.png"}}
    body = params(1, messages=[{"role": "user", "content": [image]}])
    [result] = run_batch(client, [body])
    assert result.type == "errored"
    assert result.error.error.type == "invalid_request_error"


def test_the_readme_local_config_loads() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    [config] = [
        BackendConfig(**tomllib.loads(block)["backends"][0])
        for block in blocks
        if 'kind = "transformers"' in block
    ]
    assert (config.kind, config.max_concurrency, config.max_batch_size) == ("transformers", 64, 32)
    assert config.model_path is not None


def test_a_conversation_the_template_refuses_is_an_invalid_request(
    connect: Any, model_dir: Path, tmp_path: Path
) -> None:
    directory = Path(shutil.copytree(model_dir, tmp_path / "model"))
    template = directory / "chat_template.jinja"
    refuse = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    template.write_text(refuse + template.read_text())
    client = connect(directory)
    bodies = [params(1, system=SYSTEM), params(1)]
    refused, served = run_batch(client, bodies)
    assert refused.type == "errored"
    assert refused.error.error.type == "invalid_request_error"
    assert "user first" in refused.error.error.message
    assert served.type == "succeeded"


@pytest.mark.parametrize("kind", ["transformers", "vllm"])
def test_a_local_kind_needs_a_model_path(kind: str) -> None:
    with pytest.raises(ValueError, match="needs model_path"):
        BackendConfig.model_validate({"name": "local", "kind": kind, "models": [MODEL]})


LOOKUP = {"name": "lookup", "description": "find a word", "input_schema": {"type": "object"}}
SCRIPTED = {"logits_processors": ["tests.support.scripted:scripted"]}


def scripted(text: str, **extra: Any) -> dict[str, Any]:
    """A request whose answer the scripted logits processor forces to be ``text``."""
    content = f"SCRIPT:{text}"
    return params(
        1, **{"messages": [{"role": "user", "content": content}], "tools": [LOOKUP], **extra}
    )


@pytest.mark.parametrize(
    ("fmt", "written"),
    [
        # Hermes / Qwen: tagged JSON, after some text
        (
            "hermes",
            'Let me look. <tool_call>{"name": "lookup", "arguments": {"word": "cache"}}'
            "</tool_call>",
        ),
        # Llama 3: the whole turn is the JSON call
        ("llama3", '{"name": "lookup", "parameters": {"word": "cache"}}'),
    ],
)
def test_a_models_tool_call_is_a_tool_use_block(connect: Any, fmt: str, written: str) -> None:
    client = connect(tool_call_format=fmt, **SCRIPTED)
    [result] = run_batch(client, [scripted(written, max_tokens=200)])
    message = result.message
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert (call.name, call.input) == ("lookup", {"word": "cache"})
    assert call.id.startswith("toolu_")
    texts = [block.text for block in message.content if block.type == "text"]
    assert texts == (["Let me look."] if fmt == "hermes" else [])


def test_a_malformed_tool_call_errors_that_request_only(connect: Any) -> None:
    client = connect(tool_call_format="hermes", **SCRIPTED)
    broken = '<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>'
    unknown = '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>'
    fine = '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>'
    bodies = [scripted(t, max_tokens=200) for t in (broken, unknown, fine)]
    first, second, third = run_batch(client, bodies)
    for result in (first, second):
        assert result.type == "errored"
        assert result.error.error.type == "api_error"
        assert "tool call" in result.error.error.message
    assert third.type == "succeeded"
    assert third.message.stop_reason == "tool_use"


def test_without_tools_a_tool_call_stays_text(connect: Any) -> None:
    client = connect(tool_call_format="hermes", **SCRIPTED)
    written = '<tool_call>{"name": "lookup", "arguments": {}}</tool_call>'
    body = scripted(written, max_tokens=200)
    del body["tools"]
    [result] = run_batch(client, [body])
    assert result.message.stop_reason == "end_turn"
    assert result.message.content[0].text == written


def test_a_prompt_past_the_context_is_refused_before_generating(connect: Any) -> None:
    client = connect()
    body = params(1, max_tokens=2040)  # the tiny model's context is 2,048 tokens
    counted = client.messages.count_tokens(model=MODEL, messages=body["messages"]).input_tokens
    [refused, served] = run_batch(client, [body, params(1, max_tokens=2048 - counted)])
    assert refused.type == "errored"
    assert refused.error.error.type == "invalid_request_error"
    message = refused.error.error.message
    assert f"{counted} prompt tokens + 2040 max_tokens" in message
    assert "2048" in message
    assert served.type == "succeeded"


def test_count_tokens_refuses_a_prompt_past_the_context(connect: Any) -> None:
    client = connect()
    long = [{"role": "user", "content": "the model batch token " * 700}]
    with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: \d+ tokens > 2048"):
        client.messages.count_tokens(model=MODEL, messages=long)


def test_a_shared_prefix_is_reported_as_cache_reads(connect: Any, reference: Reference) -> None:
    client = connect(max_batch_size=4)
    system = " ".join(["the system prompt is long and shared"] * 12)
    bodies = [params(i, system=system, max_tokens=4) for i in range(12)]
    results = run_batch(client, bodies)
    usages = [r.message.usage for r in results]
    for body, usage in zip(bodies, usages, strict=True):
        cached = (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
        assert usage.input_tokens + cached == len(reference.prompt(body))
    system_tokens = len(reference.tokenizer(system)["input_ids"])
    reads = [u.cache_read_input_tokens or 0 for u in usages]
    assert sum(r > system_tokens for r in reads) == 11  # computed once, by one request


FETCH = {"name": "fetch", "description": "fetch a page", "input_schema": {"type": "object"}}
LOOKUP_CALL = '<tool_call>{"name": "lookup", "arguments": {"word": "cache"}}</tool_call>'


def test_tool_choice_none_leaves_a_tool_call_as_text(connect: Any) -> None:
    client = connect(tool_call_format="hermes", **SCRIPTED)
    body = scripted(LOOKUP_CALL, max_tokens=200, tool_choice={"type": "none"})
    [result] = run_batch(client, [body])
    assert result.message.stop_reason == "end_turn"
    assert result.message.content[0].text == LOOKUP_CALL


def test_tool_choice_holds_the_model_to_the_tools_it_names(connect: Any) -> None:
    client = connect(tool_call_format="hermes", **SCRIPTED)
    tools = [LOOKUP, FETCH]
    bodies = [
        # the named tool: read as usual
        scripted(LOOKUP_CALL, tools=tools, tool_choice={"type": "tool", "name": "lookup"}),
        # another defined tool than the one named
        scripted(LOOKUP_CALL, tools=tools, tool_choice={"type": "tool", "name": "fetch"}),
        # a call required, none written
        scripted("no call here", tools=tools, tool_choice={"type": "any"}),
    ]
    named, other, missing = run_batch(client, [{**b, "max_tokens": 200} for b in bodies])
    assert named.message.stop_reason == "tool_use"
    assert [b.name for b in named.message.content if b.type == "tool_use"] == ["lookup"]
    for result, says in ((other, "not the one tool_choice names"), (missing, "wrote none")):
        assert result.type == "errored"
        assert result.error.error.type == "api_error"
        assert says in result.error.error.message


class Recording:
    """An engine that records the jobs it is given and answers each with one token."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def start(self) -> None:
        pass

    async def generate(self, job: Job) -> Generated:
        self.jobs.append(job)
        return Generated([5], Finish.LENGTH)

    async def close(self) -> None:
        pass


async def test_the_calls_priority_reaches_the_engine(model_dir: Path) -> None:
    engine = Recording()
    config = BackendConfig(
        name="local", kind="transformers", model_path=str(model_dir), models=[MODEL]
    )
    backend = LocalBackend(config, lambda _tokenizer: engine)
    await backend.start()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    for priority in (0, 4):  # an interactive call, then low-priority batch work
        CALL_PRIORITY.set(priority)
        await backend.call_openai(OPENAI_CHAT, body, b"")
    await backend.close()
    assert [job.priority for job in engine.jobs] == [0, 4]
