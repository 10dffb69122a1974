"""Create-batch uploads in flight, per key: each may hold a body of up to ``max_body_bytes``
in memory, so one key may not run more than a few at once.

The count lives in this process (one event loop, so no lock): with several API processes
behind a load balancer, each applies the limit on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from batchd.errors import RateLimited
from batchd.usecases.keys import Caller


class UploadSlots:
    def __init__(self, per_key: int) -> None:
        self._per_key = per_key
        self._held: Counter[str] = Counter()

    @contextmanager
    def hold(self, caller: Caller) -> Iterator[None]:
        """Take one of the caller's slots for the block, or raise RateLimited (429)."""
        # In open mode every caller is the same anonymous tenant: any key would do.
        who = caller.key_id or f"workspace:{caller.workspace}"
        if self._held[who] >= self._per_key:
            raise RateLimited(
                f"this key already has {self._per_key} batch uploads in progress; "
                "retry once one of them has been answered"
            )
        self._held[who] += 1
        try:
            yield
        finally:
            self._held[who] -= 1
            if not self._held[who]:
                del self._held[who]
