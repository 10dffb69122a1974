"""One backend as the engine and the Messages API use it: paced, retried and measured.

Every upstream call of every backend goes through ``BackendRunner.run``: it waits for the
rate budgets, times the call, feeds the pacer (success or congestion), records metrics, and
between retries gives its slot back so that a backing-off request does not hold capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from batchd.backends.base import Backend
from batchd.backends.estimate import tokens_of_length
from batchd.backends.pacing import Pacer, Slot
from batchd.backends.retry import RetryPolicy, call_with_retries
from batchd.config import BackendConfig, ReuseMode
from batchd.errors import UpstreamError
from batchd.metrics import Metrics
from batchd.validation import Params


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0


class BackendRunner:
    def __init__(
        self,
        backend: Backend,
        pacer: Pacer,
        policy: RetryPolicy,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        reuse_answers: ReuseMode = "off",
    ) -> None:
        self.backend = backend
        self.reuse_answers = reuse_answers
        self.pacer = pacer
        self.policy = policy.for_backend(backend.max_retries)
        self._metrics = metrics
        self._clock = clock
        self._latency = metrics.upstream_latency.labels(backend.name)
        self._tokens_in = metrics.tokens.labels(backend.name, "input")
        self._tokens_out = metrics.tokens.labels(backend.name, "output")

    @property
    def name(self) -> str:
        return self.backend.name

    async def run(
        self,
        params: Params,
        raw: bytes,
        slot: Slot,
        *,
        interactive: bool,
        policy: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """Run one request while holding ``slot``; the slot is held again when this returns."""
        estimate = tokens_of_length(len(raw)) + params.max_tokens  # until the usage is known

        async def attempt() -> dict[str, Any]:
            if self.pacer.requests is not None:
                await self.pacer.requests.take(1)
            charged = 0.0  # of the token budget: at most a full bucket of the estimate
            if self.pacer.tokens is not None:
                charged = await self.pacer.tokens.take(estimate)
            started = self._clock()
            try:
                message = await self.backend.create_message(params, raw)
            except UpstreamError as exc:
                self._observe_failure(exc, self._clock() - started, charged)
                raise
            self._observe_success(message, self._clock() - started, charged)
            return message

        async def wait(exc: UpstreamError, delay: float) -> None:
            self.pacer.retries += 1
            self._metrics.retries.labels(self.name, exc.error_type).inc()
            slot.release()
            await asyncio.sleep(delay)
            await slot.reacquire(interactive=interactive)

        return await call_with_retries(attempt, policy or self.policy, wait=wait)

    def _observe_failure(self, exc: UpstreamError, latency: float, charged: float) -> None:
        self._latency.observe(latency)
        self._metrics.upstream_errors.labels(self.name, exc.error_type).inc()
        self.pacer.failed(exc.error_type, exc.message)
        if self.pacer.tokens is not None:
            self.pacer.tokens.adjust(-charged)  # nothing was generated: give the budget back

    def _observe_success(self, message: dict[str, Any], latency: float, charged: float) -> None:
        self._latency.observe(latency)
        self.pacer.succeeded(latency)
        usage = message.get("usage")
        used_in, used_out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
        self._tokens_in.inc(used_in)
        self._tokens_out.inc(used_out)
        if self.pacer.tokens is not None:
            self.pacer.tokens.adjust(used_in + used_out - charged)


def build_runners(
    backends: dict[str, Backend],
    configs: list[BackendConfig],
    policy: RetryPolicy,
    metrics: Metrics,
) -> dict[str, BackendRunner]:
    by_name = {c.name: c for c in configs}
    return {
        name: BackendRunner(
            backend,
            Pacer(by_name[name], metrics),
            policy,
            metrics,
            reuse_answers=by_name[name].reuse_answers,
        )
        for name, backend in backends.items()
    }
