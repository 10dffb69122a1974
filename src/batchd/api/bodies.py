"""Request bodies held in memory at once: bytes per key and across all keys, and create-batch
uploads per key.

Every route that reads a body reads it under ``BodyBudget.holding``: the declared
``content-length`` is charged before the first byte is read (a chunked body, chunk by chunk),
and the charge stays until the route has answered, since the body is held until then. A
charge over the key's budget or the server's is refused with 429 (the client may retry once
its other bodies are answered); a body larger than either budget could ever hold, with 413.
A key may also have only ``uploads_per_key`` create-batch uploads in progress (each may hold
up to ``max_body_bytes``, and several times that while it is parsed and stored).

The counts live in this process (one event loop, so no lock): with several API processes
behind a load balancer, each applies the limits on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from batchd.config import Settings
from batchd.errors import RateLimited, RequestTooLarge
from batchd.usecases.keys import Caller


def tenant(caller: Caller) -> str:
    """Whom a caller's limits are counted against: its key."""
    # In open mode every caller is the same anonymous tenant: any key would do.
    return caller.key_id or f"workspace:{caller.workspace}"


class Held:
    """The bytes one request's body holds; ``take`` charges more of them."""

    def __init__(self, budget: BodyBudget, tenant: str) -> None:
        self._budget = budget
        self._tenant = tenant
        self.bytes = 0

    def take(self, size: int) -> None:
        """Charge ``size`` more bytes, or raise RateLimited (429) / RequestTooLarge (413)."""
        self._budget._charge(self._tenant, size)
        self.bytes += size


class BodyBudget:
    def __init__(
        self,
        *,
        uploads_per_key: int,
        bytes_per_key: int,
        bytes_total: int,
        calls_per_key: int | None = None,
    ) -> None:
        self._uploads_per_key, self._calls_per_key = uploads_per_key, calls_per_key
        self._bytes_per_key, self._bytes_total = bytes_per_key, bytes_total
        # in progress per tenant: create-batch uploads, interactive calls, body bytes
        self._uploads, self._calls, self._bytes = Counter[str](), Counter[str](), Counter[str]()
        self._total = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyBudget:
        return cls(
            uploads_per_key=settings.max_concurrent_uploads_per_key,
            bytes_per_key=settings.max_body_bytes_per_key,
            bytes_total=settings.max_body_bytes_total,
            calls_per_key=settings.max_concurrent_calls_per_key,
        )

    @property
    def held_bytes(self) -> int:
        return self._total

    def upload(self, caller: Caller) -> AbstractContextManager[None]:
        """Take one of the caller's create-batch upload slots, or raise RateLimited (429)."""
        return _slot(self._uploads, tenant(caller), self._uploads_per_key, "batch uploads")

    def calling(self, caller: Caller) -> AbstractContextManager[None]:
        """Take one of the caller's interactive call slots (``max_concurrent_calls_per_key``:
        /v1/messages, count_tokens, /v1/chat/completions, /v1/embeddings), or raise
        RateLimited (429)."""
        if self._calls_per_key is None:
            return nullcontext()
        return _slot(self._calls, tenant(caller), self._calls_per_key, "interactive calls")

    @contextmanager
    def holding(self, caller: Caller) -> Iterator[Held]:
        """Charge the body read in the block to the caller; give the bytes back after it."""
        held = Held(self, tenant(caller))
        try:
            yield held
        finally:
            self._release(held._tenant, held.bytes)

    def _charge(self, tenant: str, size: int) -> None:
        budget = min(self._bytes_per_key, self._bytes_total)
        if size > budget:  # more than could ever be held: retrying cannot help
            raise RequestTooLarge(f"request body exceeds the limit of {budget} bytes")
        if self._bytes[tenant] + size > self._bytes_per_key:
            raise RateLimited(
                f"this key's requests in progress already hold {self._bytes[tenant]} bytes of "
                f"request bodies (at most {self._bytes_per_key}); retry once one of them has "
                "been answered"
            )
        if self._total + size > self._bytes_total:
            raise RateLimited(
                "the server is holding as many request bodies as it may; retry shortly"
            )
        self._bytes[tenant] += size
        self._total += size

    def _release(self, tenant: str, size: int) -> None:
        if not size:
            return
        self._bytes[tenant] -= size
        self._total -= size
        if not self._bytes[tenant]:
            del self._bytes[tenant]


@contextmanager
def _slot(held: Counter[str], who: str, limit: int, what: str) -> Iterator[None]:
    if held[who] >= limit:
        raise RateLimited(
            f"this key already has {limit} {what} in progress; retry once one of them has "
            "been answered"
        )
    held[who] += 1
    try:
        yield
    finally:
        held[who] -= 1
        if not held[who]:
            del held[who]
