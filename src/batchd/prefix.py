"""The prefix key: where a request goes in its batch's claim order, so that the requests
whose prompts start alike are claimed, and run, together.

A key is one short digest per part of the prompt, in the order chat templates render
them: the model, the tools, the system prompt, then each turn but the last (the question
that differs from request to request), at most PARTS parts. Sorted by key, a batch's
requests follow a depth-first walk of the tree their prompts' shared parts make (the
whole-batch prefix grouping of BatchLLM, at the grain of whole parts): the requests with
one system prompt together, within them those with the same first turns together, and
so on. Computed once, when the batch is created; claims go in (prefix_key, id) order, so
requests with equal keys keep the batch file's order. Keys are lowercase hex digits only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from batchd.validation import Params

PARTS = 8  # digests in a key at most: deeper turns seldom share a prefix worth grouping
_DIGEST_BYTES = 4  # 8 hex digits a part: equal digests of unequal parts only misplace


def _digest(part: Any) -> str:
    return hashlib.blake2b(msgspec.json.encode(part), digest_size=_DIGEST_BYTES).hexdigest()


def prefix_key(params: Params) -> str:
    """The request's prefix key (see the module's docstring)."""
    parts: list[Any] = [params.model, params.tools, params.system]
    parts += [(m.role, m.content) for m in params.messages[:-1]]
    return "".join(_digest(part) for part in parts[:PARTS])
