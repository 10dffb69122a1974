"""What an upstream says about its own limits, read from the headers of any answer.

Hosted APIs publish their budgets in every answer: Anthropic as
``anthropic-ratelimit-{requests,tokens,input-tokens}-{limit,remaining,reset}`` (the reset an
RFC 3339 time), OpenAI and the proxies that copy it as
``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (the reset a duration such as
``1s``, ``6m0s`` or ``20ms``). ``read_limits`` turns either into ``Budget`` values; the
pacer (``backends/pacing.py``) keeps a token bucket per budget in step with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

BudgetName = Literal["requests", "tokens"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAMES: tuple[BudgetName, ...] = ("requests", "tokens")
# Anthropic names the combined token budget "tokens"; where only input tokens are limited
# (the newer per-direction budgets), that is the budget a request's size spends.
_ANTHROPIC_FAMILIES: dict[BudgetName, tuple[str, ...]] = {
    "requests": ("requests",),
    "tokens": ("tokens", "input-tokens"),
}


@dataclass(frozen=True, slots=True)
class Budget:
    """One published budget: ``remaining`` of ``limit`` now, full again in ``reset`` seconds."""

    limit: float
    remaining: float
    reset: float | None


def duration_seconds(value: str) -> float | None:
    """``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` or a bare number of seconds; None if neither."""
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _seconds_until(value: str, now: float) -> float | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return duration_seconds(value)
    return max(when.timestamp() - now, 0.0)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def _budget(limit: str | None, remaining: str | None, reset: float | None) -> Budget | None:
    top, left = _number(limit), _number(remaining)
    if top is None or left is None or top <= 0:
        return None
    return Budget(top, min(left, top), reset)


def read_limits(headers: Mapping[str, str], now: float) -> dict[BudgetName, Budget]:
    """The budgets an answer's headers publish (none when it publishes none)."""
    found: dict[BudgetName, Budget] = {}
    for name, families in _ANTHROPIC_FAMILIES.items():
        for family in families:
            prefix = f"anthropic-ratelimit-{family}-"
            reset = headers.get(prefix + "reset")
            budget = _budget(
                headers.get(prefix + "limit"),
                headers.get(prefix + "remaining"),
                _seconds_until(reset, now) if reset else None,
            )
            if budget is not None:
                found[name] = budget
                break
    for name in _NAMES:
        if name in found:
            continue
        reset = headers.get(f"x-ratelimit-reset-{name}")
        budget = _budget(
            headers.get(f"x-ratelimit-limit-{name}"),
            headers.get(f"x-ratelimit-remaining-{name}"),
            duration_seconds(reset) if reset else None,
        )
        if budget is not None:
            found[name] = budget
    return found
