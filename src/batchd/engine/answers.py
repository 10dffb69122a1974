"""Answer reuse, batchd's own (a backend's ``reuse_answers``): a batch request whose canonical
params match a request that already succeeded on the same backend, in the same workspace, is
answered from that stored result instead of an upstream call.

The canonical params are every key the client sent but ``metadata`` (model, messages,
system, tools, sampling, ``max_tokens``, stop sequences, and whatever else changes the
answer), with the backend the model is routed to and the workspace, encoded with sorted
keys; the store keeps only their 16-byte BLAKE2b digest (in hex) beside the succeeded
result. The engine looks up the answers of a claim's requests in one query.
A reused answer is a normal ``succeeded`` result with a new message id.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from batchd.config import ReuseMode
from batchd.ids import new_message_id
from batchd.validation import Params

_decode_object: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])


def reusable(mode: ReuseMode, params: Params) -> bool:
    """Whether a request with these params may be answered from a stored answer."""
    if mode == "always":
        return True
    return mode == "deterministic" and params.temperature == 0


def answer_key(workspace: str, backend: str, raw: bytes) -> str:
    """The digest of a request's canonical params (``raw``: its params as sent), in hex."""
    params = _decode_object.decode(raw)
    params.pop("metadata", None)
    canonical = msgspec.json.encode([workspace, backend, params], order="sorted")
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


class _Succeeded(msgspec.Struct):
    message: dict[str, Any]


class _Line(msgspec.Struct):
    result: _Succeeded


_decode_line = msgspec.json.Decoder(_Line).decode


def reused_message(stored: bytes, model: str) -> dict[str, Any]:
    """The message of a stored succeeded result line: the same answer (and usage), under a
    new message id and the model name this request asked for."""
    message = _decode_line(stored).result.message
    message["id"] = new_message_id()
    message["model"] = model
    return message
