"""A clock the test moves by hand, for the engine and the use cases (``clock=``)."""

from __future__ import annotations

import threading
import time


class ManualClock:
    """Stands still until ``advance``; it starts at the real time, so that stored times
    and ids minted beside it look ordinary. Safe to read from the server's thread."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
