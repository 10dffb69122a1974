"""One backend as the engine and the Messages API use it: paced, retried and measured.

Every upstream call of every backend goes through ``BackendRunner.run`` (a Messages
request) or ``BackendRunner.run_openai`` (an OpenAI one), both through one ``_call``: it
waits for the rate budgets, times the call, feeds the pacer (success or congestion, and the
rate-limit headers of every answer, through ``http.ANSWER_HEADERS``), records metrics, and
between retries gives its slot back so that a backing-off request does not hold capacity.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from batchd.backends.base import CALL_PRIORITY, Backend, OpenAIServer
from batchd.backends.estimate import tokens_of_length
from batchd.backends.http import ANSWER_HEADERS
from batchd.backends.pacing import Call, Lane, Pacer, Slot, TokenBucket
from batchd.backends.retry import RetryPolicy, call_with_retries
from batchd.config import BackendConfig, ReuseMode
from batchd.errors import InvalidRequest, UpstreamError
from batchd.metrics import Metrics
from batchd.validation import Params

# where each dialect's answer counts its (input, output) tokens
_MESSAGES_USAGE = ("input_tokens", "output_tokens")
_OPENAI_USAGE = ("prompt_tokens", "completion_tokens")
_UPSTREAM_PRIORITY = {Lane.INTERACTIVE: 0, Lane.FLEX: 1}
_BATCH_PRIORITY = 3  # a normal batch's; high 2, low 4


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and value >= 0 else 0


def openai_output_limit(body: dict[str, Any]) -> int:
    """The output tokens an OpenAI request may use, for the pacer's charge before the call:
    ``max_completion_tokens``, else ``max_tokens``, else none counted (embeddings)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


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
        # checked once: a runtime Protocol check costs about 20 us, per request otherwise
        self._openai = backend if isinstance(backend, OpenAIServer) else None
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
        interactive: bool = False,
        policy: RetryPolicy | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """Run one request while holding ``slot``; the slot is held again when this returns.
        The slot's lane says whose call it is (``interactive`` is kept for older callers);
        ``priority`` is the batch's (domain.Priority), for upstreams that schedule by it."""
        del interactive  # the slot knows its lane
        estimate = tokens_of_length(len(raw)) + params.max_tokens  # until the usage is known
        return await self._call(
            lambda: self.backend.create_message(params, raw),
            estimate,
            _MESSAGES_USAGE,
            slot,
            policy=policy,
            priority=priority,
        )

    async def run_openai(
        self,
        endpoint: str,
        body: dict[str, Any],
        raw: bytes,
        slot: Slot,
        *,
        interactive: bool = False,
        policy: RetryPolicy | None = None,
        priority: int = 0,
    ) -> dict[str, Any]:
        """``run`` for one OpenAI request (``OpenAIServer.call_openai``): the same pacing,
        retries and measures; the usage read from ``prompt_tokens``/``completion_tokens``."""
        server = self._openai
        if server is None:
            raise InvalidRequest(f"model: backend {self.name!r} does not serve {endpoint}")
        del interactive  # the slot knows its lane
        estimate = tokens_of_length(len(raw)) + openai_output_limit(body)
        return await self._call(
            lambda: server.call_openai(endpoint, body, raw),
            estimate,
            _OPENAI_USAGE,
            slot,
            policy=policy,
            priority=priority,
        )

    async def _call(
        self,
        call: Callable[[], Awaitable[dict[str, Any]]],
        estimate: int,
        usage_keys: tuple[str, str],
        slot: Slot,
        *,
        policy: RetryPolicy | None,
        priority: int,
    ) -> dict[str, Any]:
        CALL_PRIORITY.set(_UPSTREAM_PRIORITY.get(slot.lane, _BATCH_PRIORITY - priority))

        async def attempt() -> dict[str, Any]:
            charged = await self.pacer.admit(estimate)
            started = self.pacer.call_started()
            token = ANSWER_HEADERS.set(lambda headers: self.pacer.observe_headers(headers, started))
            try:
                answer = await call()
            except UpstreamError as exc:
                self._observe_failure(exc, started, charged)
                raise
            finally:
                ANSWER_HEADERS.reset(token)
                self.pacer.call_ended(started)
            self._observe_success(answer, usage_keys, started, charged)
            return answer

        async def wait(exc: UpstreamError, delay: float) -> None:
            self.pacer.retries += 1
            self._metrics.retries.labels(self.name, exc.error_type).inc()
            slot.release()
            await self.pacer.wait_to_retry(delay, exc.error_type)
            await slot.reacquire()

        return await call_with_retries(attempt, policy or self.policy, wait=wait)

    def _observe_failure(
        self, exc: UpstreamError, call: Call, charged: list[tuple[TokenBucket, float]]
    ) -> None:
        self._latency.observe(self._clock() - call.started)
        self._metrics.upstream_errors.labels(self.name, exc.error_type).inc()
        self.pacer.failed(exc.error_type, exc.message, call)
        for bucket, amount in charged:
            bucket.adjust(-amount)  # nothing was generated: give the budget back

    def _observe_success(
        self,
        answer: dict[str, Any],
        usage_keys: tuple[str, str],
        call: Call,
        charged: list[tuple[TokenBucket, float]],
    ) -> None:
        latency = self._clock() - call.started
        self._latency.observe(latency)
        self.pacer.succeeded(latency, call)
        usage = answer.get("usage")
        used_in, used_out = (_count(usage, key) for key in usage_keys)
        self._tokens_in.inc(used_in)
        self._tokens_out.inc(used_out)
        for bucket, amount in charged:
            bucket.adjust(used_in + used_out - amount)


def build_runners(
    backends: dict[str, Backend],
    configs: list[BackendConfig],
    policy: RetryPolicy,
    metrics: Metrics,
    buckets: Callable[[str, float, float], TokenBucket] | None = None,
) -> dict[str, BackendRunner]:
    """A runner per backend; ``buckets`` makes the configured budgets' buckets (shared by
    the workers of a PostgreSQL database: backends/fleet.py)."""
    by_name = {c.name: c for c in configs}
    return {
        name: BackendRunner(
            backend,
            Pacer(by_name[name], metrics, buckets=buckets),
            policy,
            metrics,
            reuse_answers=by_name[name].reuse_answers,
        )
        for name, backend in backends.items()
    }
