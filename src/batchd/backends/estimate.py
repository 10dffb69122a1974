"""A rough input-token estimate, for upstreams that cannot count tokens themselves.

``tokens_of_length`` is the one place that turns characters into tokens: the estimates
here, the mock's usage and the pacer's charge before a call all use it.

About four characters a token over every piece of text in the system prompt and the
messages (text, tool inputs and results, roles), plus the tool definitions as JSON text;
each image costs a fixed ``IMAGE_TOKENS``. Identifiers, block types, media types and base64
payloads are not text and count nothing.

A request's estimate (``estimate_input_tokens``) is of the prompt a chat template renders,
not only of its text: a model reads markers around every message (the system prompt is
one), the header its answer follows, and instructions around tool definitions. The
constants below are those of the common templates (ChatML as Qwen uses it, Llama 3's: 4
to 5 tokens a message with the role, 3 to 5 for the header; 60 to 90 tokens of tool
instructions); OpenAI documents 3 a message besides the role, and 3 for the reply. A
template that adds a system prompt of its own (Qwen 2.5, Llama 3.1's dates) costs more.
It is an estimate: a real tokenizer may differ by tens of percent (README, "Counting
tokens", has measured figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1_000
MESSAGE_TOKENS = 3  # a chat template's markers around each message, besides its role
PROMPT_TOKENS = 3  # the start of the prompt and the header the answer follows
TOOLS_TOKENS = 64  # a template's instructions around the tool definitions
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
        elif isinstance(item, msgspec.Struct):  # a decoded message (role, content)
            stack.extend(getattr(item, name) for name in item.__struct_fields__)
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
    """The estimate for a request's rendered prompt: its system prompt, messages (dicts or
    decoded messages) and tool definitions, and the template's tokens around them."""
    definitions = msgspec.json.encode(tools).decode() if tools else None
    turns = (len(messages) if isinstance(messages, list) else 0) + (1 if system else 0)
    template = PROMPT_TOKENS + turns * MESSAGE_TOKENS + (TOOLS_TOKENS if tools else 0)
    return estimate_tokens(system, messages, definitions) + template
