"""BackendRunner: what pacing and retries see of a backend's failures."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.backends.anthropic import error_from_response
from batchd.backends.pacing import Pacer
from batchd.backends.retry import RetryPolicy
from batchd.backends.runner import BackendRunner
from batchd.config import BackendConfig
from batchd.errors import UpstreamError
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
