"""A requests-per-minute budget as a hosted API keeps it, for the fake upstreams.

``RequestBudget(per_minute, burst_seconds)`` is a token bucket refilled at ``per_minute / 60``
a second and holding ``burst_seconds`` of it. Every answer publishes it in the headers of one
vendor (``anthropic-ratelimit-requests-*`` with an RFC 3339 reset, or OpenAI's
``x-ratelimit-*-requests`` with a duration), and a call over it is refused with 429 and a
``retry-after`` of the seconds until one request is available again.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import UTC, datetime
from typing import Literal

Style = Literal["anthropic", "openai", "none"]  # none: no headers but retry-after


class RequestBudget:
    def __init__(
        self, per_minute: float, *, burst_seconds: float = 10.0, style: Style = "anthropic"
    ) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.style = style
        self.admitted = 0
        self.refused = 0
        self.first_admitted: float | None = None
        self.last_admitted: float | None = None
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, dict[str, str]]:
        """Admit one call or not, and the headers its answer carries."""
        with self._lock:
            now = time.monotonic()
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
            admitted = self._level >= 1
            if admitted:
                self._level -= 1
                self.admitted += 1
                if self.first_admitted is None:
                    self.first_admitted = now
                self.last_admitted = now
            else:
                self.refused += 1
            headers = self._headers()
            if not admitted:
                headers["retry-after"] = str(math.ceil((1 - self._level) / self.rate))
            return admitted, headers

    def used_share(self) -> float:
        """Calls admitted over what the budget allowed from the first one to the last: a
        full bucket, and the refill in between."""
        with self._lock:
            start, end = self.first_admitted or 0.0, self.last_admitted or 0.0
            return self.admitted / (self.capacity + (end - start) * self.rate)

    def _headers(self) -> dict[str, str]:
        if self.style == "none":
            return {}
        full_in = (self.capacity - self._level) / self.rate
        remaining = str(max(0, math.floor(self._level)))
        limit = str(int(self.per_minute))
        if self.style == "openai":
            return {
                "x-ratelimit-limit-requests": limit,
                "x-ratelimit-remaining-requests": remaining,
                "x-ratelimit-reset-requests": f"{full_in:.3f}s",
            }
        reset = datetime.fromtimestamp(time.time() + full_in, UTC).isoformat()
        return {
            "anthropic-ratelimit-requests-limit": limit,
            "anthropic-ratelimit-requests-remaining": remaining,
            "anthropic-ratelimit-requests-reset": reset.replace("+00:00", "Z"),
        }
