"""A batch's place in the queue, as batchd's own extension headers on create ask for it.

``batchd-priority: high | normal | low`` (default normal) and ``batchd-completion-window``:
a whole number of hours or days from ``1h`` to ``7d`` (default: the server's 24 hours,
``batch_ttl_seconds``). Anything else is a 400 ``invalid_request_error`` naming the allowed
values, checked before the body is read, so nothing is stored. The window sets the batch's
``expires_at``: its deadline, which the engine serves earliest first (engine/order.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from batchd.domain import Priority
from batchd.errors import InvalidRequest

PRIORITY_HEADER = "batchd-priority"
WINDOW_HEADER = "batchd-completion-window"
MIN_WINDOW = 3600.0
MAX_WINDOW = 7 * 24 * 3600.0
_WINDOW = re.compile(r"([1-9][0-9]{0,3})([hd])")
_UNIT = {"h": 3600.0, "d": 24 * 3600.0}
PRIORITIES = {p.name.lower(): p for p in Priority}


@dataclass(frozen=True, slots=True)
class Schedule:
    priority: Priority = Priority.NORMAL
    window: float | None = None  # seconds; None: the server's default


def parse_schedule(priority: str | None, window: str | None) -> Schedule:
    """The schedule the headers ask for; InvalidRequest naming the allowed values if not."""
    level = Priority.NORMAL
    if priority is not None:
        if priority.strip().lower() not in PRIORITIES:
            raise InvalidRequest(
                f"{PRIORITY_HEADER}: {priority!r} is not a priority; use one of "
                f"{', '.join(PRIORITIES)}"
            )
        level = PRIORITIES[priority.strip().lower()]
    seconds = None
    if window is not None:
        match = _WINDOW.fullmatch(window.strip().lower())
        seconds = int(match[1]) * _UNIT[match[2]] if match else None
        if seconds is None or not MIN_WINDOW <= seconds <= MAX_WINDOW:
            raise InvalidRequest(
                f"{WINDOW_HEADER}: {window!r} is not an allowed completion window; use a "
                "whole number of hours or days from 1h to 7d (for example 1h, 12h, 24h, 3d, 7d)"
            )
    return Schedule(level, seconds)


def window_name(seconds: float) -> str:
    """``24h``, ``3d``: a window as the header writes it (whole hours, else seconds)."""
    if seconds % _UNIT["d"] == 0:
        return f"{int(seconds // _UNIT['d'])}d"
    if seconds % _UNIT["h"] == 0:
        return f"{int(seconds // _UNIT['h'])}h"
    return f"{seconds:g}s"
