"""The Messages API on the wire: what a request carries (also each batch request's
``params``) and the Message that answers it; count_tokens' body and answer.

Request types say what batchd checks, no more: unknown keys are allowed and kept (the raw
bytes go to the backend), and content blocks and tools stay plain dicts, so that block
types batchd does not know pass through. ``validation`` decodes into these types and adds
the checks their dicts leave out (a block's ``type``, a text block's ``text``, a tool's
``name``), which the document states in JSON Schema. ``Message`` parses as the SDK's
``anthropic.types.Message``; its content lists the block types batchd's backends make.
Backends answer with plain dicts, sent as they are; ``tests/test_schemas.py`` checks that
the mock's decode as ``Message``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from batchd.schemas import Count

Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]

# -- received ---------------------------------------------------------------------------------

_BLOCK_RULES = {
    "required": ["type"],
    "properties": {"type": {"type": "string"}},
    "if": {"properties": {"type": {"const": "text"}}},
    "then": {"required": ["text"], "properties": {"text": {"type": "string"}}},
}
_TOOL_RULES = {"required": ["name"], "properties": {"name": {"type": "string"}}}

ContentBlockParam = Annotated[dict[str, Any], msgspec.Meta(extra_json_schema=_BLOCK_RULES)]
ToolParam = Annotated[dict[str, Any], msgspec.Meta(extra_json_schema=_TOOL_RULES)]
Content = str | list[ContentBlockParam]


class InputMessage(msgspec.Struct):
    role: Literal["user", "assistant", "system"]
    content: Content


InputMessages = Annotated[list[InputMessage], msgspec.Meta(min_length=1)]


class MessageParams(msgspec.Struct):
    """A Messages request, and each batch request's ``params``."""

    model: str
    max_tokens: Count
    messages: InputMessages
    system: Content | None = None
    stop_sequences: list[str] | None = None
    temperature: Unit | None = None
    top_p: Unit | None = None
    top_k: Count | None = None
    stream: bool | None = None
    tools: list[ToolParam] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class CountTokensParams(msgspec.Struct):
    """A count_tokens body: Messages params without ``max_tokens``."""

    model: str
    messages: InputMessages
    system: Content | None = None
    tools: list[ToolParam] | None = None


# -- sent -------------------------------------------------------------------------------------


class TextBlock(msgspec.Struct, omit_defaults=True, tag_field="type", tag="text"):
    text: str
    citations: list[dict[str, Any]] | None = None


class ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


ContentBlock = TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock
StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


class Usage(msgspec.Struct, omit_defaults=True):
    input_tokens: Count
    output_tokens: Count
    cache_creation_input_tokens: Count | None = None
    cache_read_input_tokens: Count | None = None


class Message(msgspec.Struct, tag_field="type", tag="message"):
    id: str
    role: Literal["assistant"]
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class MessageTokensCount(msgspec.Struct, forbid_unknown_fields=True):
    input_tokens: Count
