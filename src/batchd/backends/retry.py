"""Retrying transient upstream failures: a pure delay rule and the loop that uses it."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from batchd.errors import UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    base_seconds: float
    max_seconds: float

    def for_backend(self, max_retries: int | None) -> RetryPolicy:
        """This policy with a backend's own retry limit, where it sets one."""
        if max_retries is None:
            return self
        return RetryPolicy(max_retries, self.base_seconds, self.max_seconds)

    def delay(self, failures: int, retry_after: float | None, jitter: float) -> float | None:
        """Seconds to wait after the ``failures``-th failure, or None to give up.

        The upstream's ``retry-after`` wins (capped at ``max_seconds``); otherwise
        exponential backoff, scaled by ``jitter`` in [0, 1) down to half of it.
        """
        if failures > self.max_retries:
            return None
        if retry_after is not None:
            return min(retry_after, self.max_seconds)
        backoff = min(self.base_seconds * 2.0 ** (failures - 1), self.max_seconds)
        return backoff * (1 - 0.5 * jitter)


async def _sleep(_: UpstreamError, delay: float) -> None:
    await asyncio.sleep(delay)


async def call_with_retries(
    call: Callable[[], Awaitable[dict[str, Any]]],
    policy: RetryPolicy,
    *,
    wait: Callable[[UpstreamError, float], Awaitable[None]] = _sleep,
    jitter: Callable[[], float] = random.random,
) -> dict[str, Any]:
    """Call until it succeeds, fails for good, or runs out of retries.

    ``wait(error, delay)`` is awaited between attempts; by default it just sleeps.
    """
    failures = 0
    while True:
        try:
            return await call()
        except UpstreamError as exc:
            if not exc.retryable:
                raise
            failures += 1
            delay = policy.delay(failures, exc.retry_after, jitter())
            if delay is None:
                raise
            log.debug(
                "upstream %s (%s); retry %d in %.2fs",
                exc.upstream_status,
                exc.message,
                failures,
                delay,
            )
            await wait(exc, delay)
