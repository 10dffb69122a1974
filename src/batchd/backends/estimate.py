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
    """(characters of text, images) in one JSON value, walked with a stack (no recursion)."""
    characters = images = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            characters += len(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Mapping):
            kind = item.get("type")
            if kind in _IMAGE_TYPES:
                images += 1
            elif kind != "base64":  # a PDF or other payload: bytes, not text
                stack.extend(v for k, v in item.items() if k not in _NOT_TEXT)
    return characters, images


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
