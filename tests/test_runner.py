"""BackendRunner: what pacing and retries see of a backend's failures."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.backends.anthropic import error_from_response
from batchd.backends.base import OPENAI_CHAT, OPENAI_EMBEDDINGS
from batchd.backends.mock import MockBackend
from batchd.backends.pacing import Pacer
from batchd.backends.retry import RetryPolicy
from batchd.backends.router import BUILTIN_MOCK
from batchd.backends.runner import BackendRunner
from batchd.config import BackendConfig
from batchd.errors import InvalidRequest, UpstreamError
from batchd.metrics import Metrics
from batchd.validation import Params, check_params

RAW = b'{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'


class RateLimitedBackend:
    """Every call is a 429 whose body names ``named`` as its type."""

    name = "b"
    max_concurrency = 16
    max_retries: int | None = 0

    def __init__(self, named: str) -> None:
        self._body = b'{"type":"error","error":{"type":"%s","message":"m"}}' % named.encode()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        raise error_from_response(429, self._body, {}, 0.0)


@pytest.mark.parametrize("named", ["rate_limit_error", "throttled", "invalid_request_error"])
async def test_pacing_sees_a_429_whatever_its_body_names(named: str) -> None:
    metrics = Metrics()
    pacer = Pacer(BackendConfig(name="b", kind="mock", max_concurrency=16), metrics)
    runner = BackendRunner(RateLimitedBackend(named), pacer, RetryPolicy(0, 0.1, 1.0), metrics)
    slot = await pacer.acquire(interactive=True)
    with pytest.raises(UpstreamError) as raised:
        await runner.run(check_params(RAW, in_batch=False), RAW, slot, interactive=True)
    assert raised.value.error_type == "rate_limit_error"
    assert pacer.limit == 8  # halved, as for any 429


def _runner(backend: Any) -> tuple[BackendRunner, Pacer, Metrics]:
    metrics = Metrics()
    pacer = Pacer(BackendConfig(name=backend.name, kind="mock", max_concurrency=16), metrics)
    return BackendRunner(backend, pacer, RetryPolicy(0, 0.1, 1.0), metrics), pacer, metrics


async def test_an_openai_call_is_measured_by_its_prompt_and_completion_tokens() -> None:
    runner, pacer, metrics = _runner(MockBackend(BUILTIN_MOCK))
    body = {"model": "mock", "messages": [{"role": "user", "content": "one two three"}]}
    slot = await pacer.acquire(interactive=True)
    answer = await runner.run_openai(OPENAI_CHAT, body, b"{}", slot, interactive=True)
    usage = answer["usage"]

    def counted(direction: str) -> float | None:
        labels = {"backend": "mock", "direction": direction}
        return metrics.registry.get_sample_value("batchd_tokens_total", labels)

    assert counted("input") == usage["prompt_tokens"]
    assert counted("output") == usage["completion_tokens"] > 0


async def test_a_backend_without_the_openai_dialect_refuses_it() -> None:
    runner, pacer, _ = _runner(RateLimitedBackend("rate_limit_error"))
    slot = await pacer.acquire(interactive=True)
    with pytest.raises(InvalidRequest):
        await runner.run_openai(OPENAI_EMBEDDINGS, {}, b"{}", slot, interactive=True)
