"""Minting public ids.

The OpenAI face's file and batch ids (``file-``, ``batch_``) carry the same 128 bits in
hex. Batch ids are ``msgbatch_`` followed by 26 Crockford base32 characters: 48 bits of
milliseconds then 80 random bits, so that ids sort by creation time to the millisecond
(like ULIDs). Within one millisecond, each id one process mints adds a random step of up
to 2**40 to the one before: still in creation order, but an id says nothing about its
neighbours (consecutive ids would let a holder of one guess the next).
"""

from __future__ import annotations

import base64
import hashlib
import random
import secrets
import threading
import time
from collections.abc import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_STEP_BITS = 40  # a millisecond starts below 2**79: room for 2**39 ids in it


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


class Minter:
    """128-bit ids, increasing in the order this process mints them."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0

    def next(self) -> int:
        with self._lock:
            ms = self._clock_ns() // 1_000_000
            if ms > self._last_ms:
                self._last_ms = ms
                self._last_rand = secrets.randbits(_RANDOM_BITS - 1)
            else:
                self._last_rand += 1 + secrets.randbits(_STEP_BITS)
            return (self._last_ms << _RANDOM_BITS) | self._last_rand


_batch_ids = Minter()
_openai_ids = Minter()
_line_ids = (
    random.Random()
)  # seeded from the OS  # the OpenAI face's files and batches: 32 hex digits, by creation


def batch_id(value: int) -> str:
    return "msgbatch_" + _encode(value, 26)


def new_batch_id() -> str:
    return batch_id(_batch_ids.next())


_webhook_ids = Minter()


def new_webhook_id() -> str:
    """A webhook message id (``webhook-id``), sortable by creation like a batch id."""
    return "msg_" + _encode(_webhook_ids.next(), 26)


def new_endpoint_id() -> str:
    return "whep_" + secrets.token_hex(8)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_message_id() -> str:
    """The id of a message batchd answers itself (a reused answer)."""
    return "msg_" + secrets.token_hex(12)


def renewed_id(old: str) -> str:
    """A new id for an answer batchd repeats (a reused answer) in another's place: the old
    id's prefix (``chatcmpl-``, ``resp_``: up to its first ``-`` or ``_``), new characters."""
    cut = min((i for i in (old.find("-"), old.find("_")) if i >= 0), default=-1)
    return old[: cut + 1] + secrets.token_hex(12)


def new_file_id() -> str:
    return f"file-{_openai_ids.next():032x}"


def new_openai_batch_id() -> str:
    return f"batch_{_openai_ids.next():032x}"


def new_batch_request_id() -> str:
    """The ``id`` of one line of an OpenAI batch's output or error file: unique, not secret
    (it names a result its reader already holds), so from the fast generator."""
    return f"batch_req_{_line_ids.getrandbits(128):032x}"


def unrun_request_id(batch_seq: int, custom_id: str) -> str:
    """The ``id`` of the line a request that never ran (expired, cancelled) has in its
    batch's error file, which is rendered anew on each read: derived from the batch's row
    (never reused) and the request's custom_id (unique in it), so the same on every read
    and one per request. Shaped as ``new_batch_request_id``'s."""
    digest = hashlib.blake2b(
        b"%d\n%s" % (batch_seq, custom_id.encode()), digest_size=16, person=b"batch_req"
    )
    return f"batch_req_{digest.hexdigest()}"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_api_key() -> str:
    return "sk-batchd-" + secrets.token_urlsafe(32)


def new_worker_id() -> str:
    return "wrk_" + secrets.token_hex(8)
