"""What every backend kind promises, written once and run against each kind.

The kinds: ``mock``; ``anthropic`` and ``openai`` against their fake upstreams (real HTTP
servers on loopback, faults on demand); ``transformers`` with the tiny model built here;
``transformers-serve``, an ``openai`` backend in front of a real ``transformers serve``
of that model (``tests/support/model_servers.py``), with the quirks a fake does not have.
Answers are driven at the ``BackendRunner`` seam (the one call the engine and the Messages
API make, paced and retried); what becomes of a request (its result, or none) through the
engine on a real SQLite store. A kind that cannot show a behaviour by its nature is listed
in ``CANNOT`` with the reason, and its case is reported as skipped with that reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from _pytest.mark.structures import ParameterSet
from anthropic.types import Message, TextBlock
from anthropic.types.messages import MessageBatchErroredResult, MessageBatchIndividualResponse

from batchd.backends.base import Backend, TokenCounter
from batchd.backends.pacing import Pacer
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import Router, build_backend
from batchd.backends.runner import BackendRunner
from batchd.config import BackendConfig
from batchd.domain import ProcessingStatus
from batchd.engine.worker import Engine, EngineSettings
from batchd.errors import UpstreamError
from batchd.metrics import Metrics
from batchd.store import open_store
from batchd.usecases.batches import BatchLimits, BatchService
from batchd.validation import stored_params
from tests.support.model_servers import serve_transformers
from tests.support.openai_upstream import FakeOpenAI, serve_openai
from tests.support.tiny_model import build_tiny_model
from tests.support.upstream import (
    HANG,
    FakeUpstream,
    Fault,
    FaultRule,
    always,
    first_attempts,
    invalid_request,
    serve_upstream,
)

MODEL = "contract-model"
WORKSPACE = "default"
POLICY = RetryPolicy(max_retries=3, base_seconds=0.01, max_seconds=0.05)
SERVE = "transformers-serve"
KINDS = ("mock", "anthropic", "openai", "transformers", SERVE)
# The error types of the API (anthropic.types.ErrorObject's members): nothing else may
# reach a client.
API_ERROR_TYPES = {
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
}

_NO_UPSTREAM = "it has no upstream: it answers every request that passed validation"
_IN_PROCESS = "the model runs in-process: there is no upstream that could answer 429/529/5xx"
_FORWARDED = (
    "both counts are the upstream's own, passed through as they come; the fake upstream "
    "answers count_tokens with a number no estimate gives, to show it was asked "
    "(tests/test_openai_backend.py)"
)
_REAL_SERVER = "a real server: no fault can be injected into it"
CANNOT: dict[tuple[str, str], str] = {
    (SERVE, "name only the API's error types"): _REAL_SERVER,
    (SERVE, "fail transiently"): _REAL_SERVER,
    (SERVE, "count tokens as usage does"): (
        "it has no /tokenize: count_tokens is an estimate (its error measured against "
        "this server: README, 'Counting tokens')"
    ),
    (SERVE, "cancel in-flight work"): (
        "no call of it can be held open on demand: the tiny model ends by itself, and "
        "transformers serve goes on generating after its caller hung up"
    ),
    ("anthropic", "count tokens as usage does"): _FORWARDED,
    ("mock", "refuse a request"): _NO_UPSTREAM,
    ("mock", "fail transiently"): _NO_UPSTREAM,
    ("mock", "name only the API's error types"): _NO_UPSTREAM,
    ("transformers", "name only the API's error types"): "it has no upstream to name a type",
    ("transformers", "fail transiently"): _IN_PROCESS,
}


# Behaviours a kind should show and does not yet: expected to fail until fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _marks(kind: str, behaviour: str) -> list[pytest.MarkDecorator]:
    if why := CANNOT.get((kind, behaviour)):
        return [pytest.mark.skip(reason=f"{kind} cannot {behaviour}: {why}")]
    if bug := KNOWN_BUGS.get((kind, behaviour)):
        return [pytest.mark.xfail(reason=f"{kind} does not {behaviour}: {bug}", strict=True)]
    return []


def kinds(behaviour: str) -> list[ParameterSet]:
    """Every kind; one that cannot show ``behaviour`` is skipped with the reason, one with
    a known bug there is expected to fail."""
    return [pytest.param(kind, id=kind, marks=_marks(kind, behaviour)) for kind in KINDS]


@dataclass
class Subject:
    """One kind, ready to call, with the means to make it misbehave."""

    kind: str
    config: BackendConfig
    backend: Backend
    plan: dict[str, FaultRule] = field(default_factory=dict)  # upstream faults by key
    calls: Callable[[str], int] | None = None  # upstream calls seen, by key
    abandoned: Callable[[str], int] | None = None  # upstream calls the caller hung up on
    hang_config: BackendConfig | None = None  # a backend whose calls never end by themselves
    hang_params: dict[str, Any] = field(default_factory=dict)
    echo: Callable[[str], str] | None = None  # the text it answers a key with, where known
    started: Callable[[str], bool] = lambda _key: True  # the call reached the model

    def fault(self, key: str, rule: FaultRule) -> None:
        self.plan[key] = rule

    def rule(self, key: str, attempt: int) -> Fault | None:
        rule = self.plan.get(key)
        return rule(key, attempt) if rule else None

    def refused(self, key: str) -> dict[str, Any]:
        """Params the kind refuses: an upstream 400, or for a local model an image block."""
        if self.kind == "transformers":
            image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
            return request(key, content=[{"type": "text", "text": key}, image])
        if self.kind == SERVE:  # it refuses fields it does not know with a 422
            return request(key, top_k=5)
        self.fault(key, always(invalid_request("messages: refused by the upstream")))
        return request(key)


def request(key: str, *, content: Any = None, **params: Any) -> dict[str, Any]:
    """Messages params whose last user text is ``key`` (how the fake upstreams tell calls
    apart); greedy, so that a local model answers the same twice."""
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 40,
        "temperature": 0,
        "messages": [{"role": "user", "content": key if content is None else content}],
    }
    return {**body, **params}


# -- the kinds ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("contract-model"))


@pytest.fixture(scope="session")
def endless_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with an end-of-turn token it can never generate: it talks until its
    ``max_tokens`` (or its caller) stops it."""
    directory = tmp_path_factory.mktemp("endless-model")
    for path in tiny_model.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    config_path = directory / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = 1_000_000
    config_path.write_text(json.dumps(config))
    # a context that holds its million-token calls: the engine refuses calls past it
    model_config_path = directory / "config.json"
    model_config = json.loads(model_config_path.read_text())
    model_config["max_position_embeddings"] = 2_000_000
    model_config_path.write_text(json.dumps(model_config))
    return directory


@pytest.fixture(scope="session")
def transformers_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real ``transformers serve`` of the tiny model, for the whole session."""
    log = tmp_path_factory.mktemp("transformers-serve") / "serve.log"
    with serve_transformers(tiny_model, log) as url:
        yield url


def _config(kind: str, **options: Any) -> BackendConfig:
    return BackendConfig.model_validate(
        {"name": kind, "kind": kind, "models": [MODEL], "max_concurrency": 8, **options}
    )


def _subject(kind: str, stack: ExitStack, request: pytest.FixtureRequest) -> Subject:
    if kind == "mock":
        config = _config(kind)
        return Subject(
            kind,
            config,
            build_backend(config),
            echo=lambda key: f"Mock reply: {key}",
            hang_config=_config(kind, latency_ms=3_600_000),  # an answer an hour away
        )
    if kind == "transformers":
        caplog: pytest.LogCaptureFixture = request.getfixturevalue("caplog")
        caplog.set_level(logging.DEBUG, logger="batchd.backends.local.transformers_engine")
        config = _config(kind, model_path=str(request.getfixturevalue("tiny_model")))
        endless = request.getfixturevalue("endless_model")
        return Subject(
            kind,
            config,
            build_backend(config),
            # max_tokens past the model's context, allowed here, so the call never ends by itself
            hang_config=_config(kind, model_path=str(endless), max_output_tokens=1_000_000),
            hang_params={"max_tokens": 1_000_000},
            started=lambda _key: "generating 1 rows" in caplog.text,  # the engine admitted it
        )
    if kind == SERVE:
        server = request.getfixturevalue("transformers_server")
        model = str(request.getfixturevalue("tiny_model"))
        config = _config("openai", name=SERVE, base_url=server, upstream_model=model)
        return Subject(kind, config, build_backend(config))
    upstream: FakeUpstream | FakeOpenAI
    if kind == "anthropic":
        upstream = stack.enter_context(serve_upstream())
    else:
        upstream = stack.enter_context(serve_openai())
    config = _config(kind, base_url=upstream.url)
    subject = Subject(
        kind,
        config,
        build_backend(config),
        echo=lambda key: key,
        calls=upstream.calls,
        abandoned=upstream.abandoned,
    )
    upstream.faults = subject.rule
    return subject


@pytest.fixture
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    """The kind named by the test's parameter, started; its upstream served meanwhile."""
    with ExitStack() as stack:
        subject = _subject(request.param, stack, request)
        await subject.backend.start()
        try:
            yield subject
        finally:
            await subject.backend.close()


# -- driving it --------------------------------------------------------------------------


def runner_for(
    config: BackendConfig, backend: Backend, metrics: Metrics | None = None
) -> BackendRunner:
    metrics = metrics or Metrics()
    return BackendRunner(backend, Pacer(config, metrics), POLICY, metrics)


async def call(runner: BackendRunner, params: dict[str, Any]) -> Message:
    """One call as the engine makes it; the answer checked by the SDK's own model."""
    raw = msgspec.json.encode(params)
    slot = runner.pacer.take()
    try:
        answer = await runner.run(stored_params(raw), raw, slot, interactive=False)
    finally:
        slot.release()
    return Message.model_validate(answer)


def text_of(message: Message) -> str:
    """The text of an answer of one text block."""
    [block] = message.content
    assert isinstance(block, TextBlock)
    return block.text


async def answer(subject: Subject, params: dict[str, Any]) -> Message:
    return await call(runner_for(subject.config, subject.backend), params)


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds (the test's timeout bounds the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


@dataclass
class Running:
    engine: Engine
    service: BatchService
    task: asyncio.Task[None]
    runner: BackendRunner

    async def submit(self, bodies: dict[str, dict[str, Any]]) -> str:
        requests = [{"custom_id": cid, "params": p} for cid, p in bodies.items()]
        batch = await self.service.create(WORKSPACE, msgspec.json.encode({"requests": requests}))
        return batch.id

    async def results(self, batch_id: str) -> dict[str, MessageBatchIndividualResponse]:
        """The batch's results once it has ended, by custom_id."""
        batch = await self.service.get(WORKSPACE, batch_id)
        while batch.processing_status is not ProcessingStatus.ENDED:  # polled, as clients do
            await asyncio.sleep(0.02)
            batch = await self.service.get(WORKSPACE, batch_id)
        lines = b"".join([chunk async for chunk in await self.service.results(WORKSPACE, batch_id)])
        parsed = [MessageBatchIndividualResponse.model_validate_json(x) for x in lines.splitlines()]
        return {r.custom_id: r for r in parsed}


@asynccontextmanager
async def engine_on_sqlite(
    db: Path, config: BackendConfig, backend: Backend
) -> AsyncIterator[Running]:
    """The engine with this one backend, on a real SQLite file, until the block exits."""
    async with AsyncExitStack() as stack:
        store = await open_store(f"sqlite:///{db}")
        stack.push_async_callback(store.close)
        metrics = Metrics()
        runner = runner_for(config, backend, metrics)
        settings = EngineSettings(
            lease_seconds=60,
            poll_interval=0.05,
            sweep_interval=0.05,
            claim_chunk=32,
            shutdown_grace=0.05,
        )
        engine = Engine(store, {config.name: runner}, settings, time.time, metrics)
        limits = BatchLimits(max_requests=100, ttl_seconds=3600, retention_seconds=3600)
        service = BatchService(store, Router([config]), limits, time.time, engine.wake)
        task = asyncio.create_task(engine.run())
        try:
            yield Running(engine, service, task, runner)
        finally:
            engine.stop()
            await task


# -- the behaviours ----------------------------------------------------------------------


@pytest.mark.parametrize("subject", kinds("answer"), indirect=True)
async def test_a_text_answer(subject: Subject) -> None:
    key = "alpha bravo charlie delta echo"
    message = await answer(subject, request(key))
    assert (message.role, message.model) == ("assistant", MODEL)
    assert [block.type for block in message.content] == ["text"]
    text = text_of(message)
    if subject.echo is None:  # a model's own words (tests/test_local_backend.py checks them)
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert text
    else:
        assert (text, message.stop_reason) == (subject.echo(key), "end_turn")
    assert message.stop_sequence is None


@pytest.mark.parametrize("subject", kinds("stop at max_tokens"), indirect=True)
async def test_max_tokens_ends_the_answer(subject: Subject) -> None:
    message = await answer(subject, request("one two three four five six seven", max_tokens=3))
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    assert message.usage.output_tokens == 3


@pytest.mark.parametrize("subject", kinds("stop at a stop sequence"), indirect=True)
async def test_a_stop_sequence_cuts_the_text_before_it(subject: Subject) -> None:
    key = "the model batch token the model batch token the model batch token 2"
    free = await answer(subject, request(key))
    text = text_of(free)
    # a short run of letters whose first occurrence is past the start of the text
    stop = next(m[0] for m in re.finditer(r"[a-z]{2,4}", text) if text.index(m[0]) > 0)
    stopped = await answer(subject, request(key, stop_sequences=["zzzzz", stop]))
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", stop)
    assert text_of(stopped) == text[: text.index(stop)]
    assert stopped.usage.output_tokens <= free.usage.output_tokens


@pytest.mark.parametrize("subject", kinds("count usage"), indirect=True)
async def test_usage_counts_are_present_and_consistent(subject: Subject) -> None:
    short = await answer(subject, request("alpha bravo", max_tokens=8))
    again = await answer(subject, request("alpha bravo", max_tokens=8))
    long = await answer(subject, request(" ".join(["alpha bravo charlie"] * 20), max_tokens=8))
    for message in (short, again, long):
        assert message.usage.input_tokens >= 1
        assert 0 <= message.usage.output_tokens <= 8
    assert again.usage.input_tokens == short.usage.input_tokens
    assert long.usage.input_tokens > short.usage.input_tokens


@pytest.mark.parametrize("subject", kinds("count tokens as usage does"), indirect=True)
async def test_count_tokens_agrees_with_usage(subject: Subject) -> None:
    params = request("alpha bravo charlie", system="be brief")
    message = await answer(subject, params)
    assert isinstance(subject.backend, TokenCounter)
    counted = await subject.backend.count_tokens(params, msgspec.json.encode(params))
    assert counted == message.usage.input_tokens


@pytest.mark.parametrize("subject", kinds("refuse a request"), indirect=True)
async def test_a_refused_request_is_that_requests_errored_result(
    subject: Subject, tmp_path: Path
) -> None:
    bodies = {"fine": request("a fine request"), "refused": subject.refused("a refused request")}
    async with engine_on_sqlite(tmp_path / "b.db", subject.config, subject.backend) as running:
        results = await running.results(await running.submit(bodies))
    assert results["fine"].result.type == "succeeded"
    refused = results["refused"].result
    assert isinstance(refused, MessageBatchErroredResult)
    assert refused.error.error.type == "invalid_request_error"
    if subject.calls is not None:  # asked once: a refusal does not improve by asking again
        assert subject.calls("a refused request") == 1


@pytest.mark.parametrize("subject", kinds("name only the API's error types"), indirect=True)
async def test_an_error_type_that_is_not_the_apis_becomes_the_statuss(subject: Subject) -> None:
    subject.fault("odd", always(Fault("status", 400, "no_db_connection", "no database")))
    with pytest.raises(UpstreamError) as raised:
        await answer(subject, request("odd"))
    assert raised.value.error_type in API_ERROR_TYPES
    assert raised.value.error_type == "invalid_request_error"


TRANSIENT = [
    Fault("status", 429, "rate_limit_error", "slow down"),
    Fault("status", 529, "overloaded_error", "overloaded"),
    Fault("status", 500, "api_error", "internal error"),
    Fault("status", 503, "api_error", "unavailable"),
]


@pytest.mark.parametrize("fault", TRANSIENT, ids=lambda f: str(f.status))
@pytest.mark.parametrize("subject", kinds("fail transiently"), indirect=True)
async def test_a_transient_failure_is_retried_and_then_succeeds(
    subject: Subject, fault: Fault
) -> None:
    subject.fault("flaky", first_attempts(2, fault))
    runner = runner_for(subject.config, subject.backend)
    message = await call(runner, request("flaky"))
    assert text_of(message) == "flaky"
    assert subject.calls is not None
    assert subject.calls("flaky") == 3
    assert runner.pacer.retries == 2


@pytest.mark.parametrize("subject", kinds("cancel in-flight work"), indirect=True)
async def test_cancelling_in_flight_work_ends_the_call_and_records_nothing(
    subject: Subject, tmp_path: Path
) -> None:
    key = "never answered"
    if subject.calls is not None:
        subject.fault(key, always(HANG))
    config = subject.hang_config or subject.config
    async with AsyncExitStack() as stack:
        backend = subject.backend
        if subject.hang_config is not None:
            backend = build_backend(config)
            await backend.start()
            stack.push_async_callback(backend.close)
        async with engine_on_sqlite(tmp_path / "c.db", config, backend) as running:
            batch_id = await running.submit({"r": request(key, **subject.hang_params)})
            await until(lambda: running.runner.pacer.in_flight == 1 and subject.started(key))
            running.engine.stop()  # in-flight calls get shutdown_grace, then are cancelled
            await running.task
            batch = await running.service.get(WORKSPACE, batch_id)
        # nothing recorded: the request is queued again for the next engine
        assert batch.processing_status is ProcessingStatus.IN_PROGRESS
        assert batch.counts.processing == 1
        assert batch.counts.succeeded == batch.counts.errored == 0
        if subject.abandoned is not None:  # the upstream saw the caller hang up
            await until(lambda: subject.abandoned is not None and subject.abandoned(key) == 1)
        if subject.kind == "transformers":  # it stopped generating: free for the next call
            message = await call(runner_for(config, backend), request("after", max_tokens=2))
            assert message.stop_reason == "max_tokens"
