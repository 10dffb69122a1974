"""A rough input-token estimate, for upstreams that cannot count tokens themselves.

``tokens_of_length`` is the one place that turns characters into tokens: the estimates
here, the mock's usage and the pacer's charge before a call all use it.

About four characters a token over every piece of text in the system prompt and the
messages (text, tool inputs and results, roles), plus the tool definitions as JSON text;
each image costs a fixed ``IMAGE_TOKENS``. Identifiers, block types, media types and base64
payloads are not text and count nothing. It is an estimate: a real tokenizer may differ by
tens of percent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1_000
_IMAGE_TYPES = frozenset({"image", "image_url"})
_NOT_TEXT = frozenset(
    {"type", "media_type", "cache_control", "id", "tool_use_id", "tool_call_id", "signature"}
)


def _characters(value: Any) -> tuple[int, int]:
    """(characters of text, images) in one JSON value."""
    if isinstance(value, str):
        return len(value), 0
    if isinstance(value, list):
        pairs = [_characters(item) for item in value]
        return sum(c for c, _ in pairs), sum(i for _, i in pairs)
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind in _IMAGE_TYPES:
            return 0, 1
        if kind == "base64":  # a PDF or other payload: bytes, not text
            return 0, 0
        pairs = [_characters(v) for k, v in value.items() if k not in _NOT_TEXT]
        return sum(c for c, _ in pairs), sum(i for _, i in pairs)
    return 0, 0


def tokens_of_length(characters: int) -> int:
    """The tokens of ``characters`` characters of text: the one "four characters a token"
    rule of batchd (at least 1)."""
    return max(1, -(-characters // CHARS_PER_TOKEN))


def estimate_tokens(*values: Any) -> int:
    """The estimated tokens of the given JSON values together (at least 1)."""
    characters = images = 0
    for value in values:
        c, i = _characters(value)
        characters, images = characters + c, images + i
    return tokens_of_length(characters) + images * IMAGE_TOKENS


def estimate_input_tokens(system: Any, messages: Any, tools: Any) -> int:
    """The estimate for a request: its system prompt, messages and tool definitions."""
    definitions = msgspec.json.encode(tools).decode() if tools else None
    return estimate_tokens(system, messages, definitions)
