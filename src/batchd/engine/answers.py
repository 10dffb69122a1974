"""Answer reuse, batchd's own (a backend's ``reuse_answers``): a batch request whose canonical
params match a request that already succeeded on the same backend, in the same workspace, is
answered from that stored result instead of an upstream call.

The canonical params are every key the client sent but those that name the caller
(``metadata``; on the OpenAI face also ``user``, ``safety_identifier`` and
``prompt_cache_key``): model, messages or input, system, tools, sampling, ``max_tokens``,
stop sequences, and whatever else changes the answer. With the backend the model is routed to
and the workspace (and an OpenAI request's endpoint, which keeps the two dialects' keys
apart), they are encoded with sorted keys; the store keeps only their 16-byte BLAKE2b digest
(in hex) beside the succeeded result. The engine looks up the answers of a claim's requests
in one query, and runs identical requests that it has in flight once (``Engine._coalesced``).
A reused answer is a normal succeeded result with a new id (a message's; a chat
completion's), and the usage of the answer it repeats.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from batchd.config import ReuseMode
from batchd.ids import new_message_id, renewed_id

# The keys that name the caller, not the answer: a Messages request's, an OpenAI body's.
_MESSAGES_CALLER_KEYS = frozenset({"metadata"})
_OPENAI_CALLER_KEYS = frozenset({"metadata", "user", "safety_identifier", "prompt_cache_key"})


def reusable(mode: ReuseMode, deterministic: bool) -> bool:
    """Whether a request may be answered from a stored answer; ``deterministic``: its answer
    is the same each time (temperature 0, or an embedding)."""
    return mode == "always" or (mode == "deterministic" and deterministic)


def answer_key(workspace: str, backend: str, sent: dict[str, Any], endpoint: str | None) -> str:
    """The digest of a request's canonical params, in hex: ``sent``, its params as sent
    (decoded; not changed), and ``endpoint``, an OpenAI request's (None: a Messages one)."""
    caller = _MESSAGES_CALLER_KEYS if endpoint is None else _OPENAI_CALLER_KEYS
    params = {k: v for k, v in sent.items() if k not in caller}
    # a Messages key has no endpoint: the keys stored before the OpenAI face still match
    canonical = [workspace, backend, params] + ([endpoint] if endpoint is not None else [])
    digest = hashlib.blake2b(msgspec.json.encode(canonical, order="sorted"), digest_size=16)
    return digest.hexdigest()


class _Succeeded(msgspec.Struct):
    message: dict[str, Any]


class _Line(msgspec.Struct):
    result: _Succeeded


class _Response(msgspec.Struct):
    body: dict[str, Any]


class _OutputLine(msgspec.Struct):
    response: _Response


_decode_line = msgspec.json.Decoder(_Line).decode
_decode_output_line = msgspec.json.Decoder(_OutputLine).decode


def reused_message(stored: bytes, model: str) -> dict[str, Any]:
    """The message of a stored succeeded result line: the same answer (and usage), under a
    new message id and the model name this request asked for."""
    message = _decode_line(stored).result.message
    message["id"] = new_message_id()
    message["model"] = model
    return message


def reused_body(stored: bytes) -> dict[str, Any]:
    """The response body of a stored line of an OpenAI output file: the same answer (and
    usage), under a new id where it has one (a chat completion's; embeddings have none)."""
    body = _decode_output_line(stored).response.body
    if isinstance(body.get("id"), str):
        body["id"] = renewed_id(body["id"])
    return body
