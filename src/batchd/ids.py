"""Minting public ids.

Batch ids are ``msgbatch_`` followed by 26 Crockford base32 characters: 48 bits of
milliseconds then 80 bits that are random at each new millisecond and counted up
within one, so that ids minted by one process sort in creation order (like ULIDs).
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


class _Monotonic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self) -> int:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms > self._last_ms:
                self._last_ms = ms
                self._last_rand = secrets.randbits(_RANDOM_BITS - 1)  # room to count up
            else:
                self._last_rand += 1
            return (self._last_ms << _RANDOM_BITS) | self._last_rand


_batch_ids = _Monotonic()


def new_batch_id() -> str:
    return "msgbatch_" + _encode(_batch_ids.next(), 26)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_api_key() -> str:
    return "sk-batchd-" + secrets.token_urlsafe(32)


def new_worker_id() -> str:
    return "wrk_" + secrets.token_hex(8)
