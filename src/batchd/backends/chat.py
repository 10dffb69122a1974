"""Anthropic Messages as chat messages: the one translation, pure functions of values.

OpenAI's chat.completions and Hugging Face chat templates (which vLLM uses too) take the
same shape: ``{"role", "content"}`` messages, assistant ``tool_calls``, ``tool`` messages
for tool results and JSON-schema function tools. The ``openai`` backend
(``openai_translate``) and local prompt rendering (``local/prompt.py``) both translate
here; a ``ChatDialect`` says only what truly differs between the two targets.

    system (string or text blocks)      a first ``system`` message
    a role "system" turn (SDK 2.x)      a ``system`` message
    content: string                     the same string
    text blocks                         their text; several: parts, or joined by blank
                                        lines where the target takes text only
    image, document blocks              the dialect's ``media`` part; refused without one
    assistant tool_use blocks           ``tool_calls`` (needs an id and a name)
    user tool_result blocks             ``tool`` messages, before the user's other content;
                                        ``is_error`` marked with TOOL_ERROR_PREFIX
    thinking / redacted_thinking        dropped (no signatures to check there)
    tools: custom (name, input_schema)  function tools (description, strict kept);
                                        ``input_schema`` is required, as on the API
    anything else                       InvalidRequest, naming where and the target

What the client sent is never silently lost: a block the target cannot take ends the
request as ``invalid_request_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from batchd.errors import InvalidRequest

TOOL_ERROR_PREFIX = "[tool error] "
# Messages' tool_choice types as chat.completions names them, both ways
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# Messages' stop_reason as chat.completions' finish_reason (a tool call, a cut, a refusal)
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})

Media = Callable[[Mapping[str, Any], str], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class ChatDialect:
    """What differs between two targets of the translation.

    ``target`` names it in refusals. ``media`` turns an image or document block into a
    content part (None for a kind it cannot take); without it, only text goes. ``wire``:
    the OpenAI JSON wire (tool call arguments as JSON text, null content beside tool
    calls) rather than a chat template's input (the arguments object, empty content).
    """

    target: str
    media: Media | None = None
    wire: bool = False


def chat_messages(
    system: str | Sequence[Mapping[str, Any]] | None,
    turns: Iterable[tuple[str, Any]],
    dialect: ChatDialect,
) -> list[dict[str, Any]]:
    """The chat messages: the system prompt first, then every (role, content) turn."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": _plain_text(system, "system", dialect)})
    for i, (role, content) in enumerate(turns):
        messages.extend(_turn(role, content, f"messages.{i}.content", dialect))
    return messages


def function_tools(
    tools: Iterable[Mapping[str, Any]] | None, dialect: ChatDialect
) -> list[dict[str, Any]]:
    """Custom tools as function definitions; built-in (server) tools are refused."""
    return [_function_tool(tool, f"tools.{i}", dialect) for i, tool in enumerate(tools or ())]


def _function_tool(tool: Mapping[str, Any], where: str, dialect: ChatDialect) -> dict[str, Any]:
    if tool.get("type", "custom") not in ("custom", None):
        raise InvalidRequest(
            f"{where}.type: the built-in tool {tool['type']!r} cannot run on "
            f"{dialect.target}; only custom tools (name, input_schema) can"
        )
    if not isinstance(tool.get("input_schema"), dict):
        raise InvalidRequest(f"{where}.input_schema: Field required")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _turn(role: str, content: Any, where: str, dialect: ChatDialect) -> list[dict[str, Any]]:
    if role == "system":
        return [{"role": "system", "content": _plain_text(content, where, dialect)}]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if role == "assistant":
        return [_assistant_turn(content, where, dialect)]
    return _user_turn(content, where, dialect)


def _assistant_turn(
    blocks: Sequence[Mapping[str, Any]], where: str, dialect: ChatDialect
) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{where}.{j}", dialect))
        elif kind not in _DROPPED_BLOCKS:
            raise _unsupported_block(kind, f"{where}.{j}", dialect)
    message: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(texts)}
    if calls:
        message["tool_calls"] = calls
        if dialect.wire:
            message["content"] = message["content"] or None
    return message


def _tool_call(block: Mapping[str, Any], where: str, dialect: ChatDialect) -> dict[str, Any]:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise InvalidRequest(f"{where}: a tool_use block needs an id and a name")
    arguments: Any = block.get("input") or {}
    if dialect.wire:
        arguments = msgspec.json.encode(arguments).decode()
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def content_texts(content: Any, where: str, target: str) -> list[str]:
    """The texts of a chat message's content (a string, text and refusal parts, or null);
    InvalidRequest for any other part, naming it and the ``target`` that cannot take it."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: a string, a list of parts or null")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        text = part.get(kind) if kind in ("text", "refusal") else None
        if not isinstance(text, str):
            raise InvalidRequest(
                f"{where}.{j}.type: content part {kind!r} cannot be sent to {target}"
            )
        texts.append(text)
    return texts


def call_arguments(call: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(name, arguments object) of a chat tool call (arguments as JSON text): the reverse of
    ``_tool_call``'s wire form; InvalidRequest when either is missing or not an object."""
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise InvalidRequest(f"{where}.function.name: Field required")
    arguments = function.get("arguments") or "{}"
    try:
        decoded = msgspec.json.decode(arguments) if isinstance(arguments, str) else None
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        raise InvalidRequest(f"{where}.function.arguments: must be a JSON object (as text)")
    return function["name"], decoded


def _user_turn(
    blocks: Sequence[Mapping[str, Any]], where: str, dialect: ChatDialect
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if block["type"] == "tool_result":
            messages.append(_tool_message(block, f"{where}.{j}", dialect))
        else:
            parts.extend(_user_parts(block, f"{where}.{j}", dialect))
    if parts or not messages:
        messages.append({"role": "user", "content": _content(parts, dialect)})
    return messages


def _content(parts: list[dict[str, Any]], dialect: ChatDialect) -> str | list[dict[str, Any]]:
    """One text part as its string; text only where the target takes no parts, joined."""
    if all(part["type"] == "text" for part in parts) and (len(parts) == 1 or not dialect.media):
        return "\n\n".join(part["text"] for part in parts)
    return parts


def _user_parts(block: Mapping[str, Any], where: str, dialect: ChatDialect) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text", "text": block["text"]}]
    if kind in _DROPPED_BLOCKS:
        return []
    part = dialect.media(block, where) if dialect.media else None
    if part is None:
        raise _unsupported_block(kind, where, dialect)
    return [part]


def _tool_message(block: Mapping[str, Any], where: str, dialect: ChatDialect) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str):
        raise InvalidRequest(f"{where}.tool_use_id: Field required")
    text = _plain_text(block.get("content") or "", f"{where}.content", dialect)
    if block.get("is_error"):
        text = TOOL_ERROR_PREFIX + text
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _plain_text(
    content: str | Sequence[Mapping[str, Any]], where: str, dialect: ChatDialect
) -> str:
    """Content where only text can go (system, tool results): text and text-like parts."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, block in enumerate(content):
        for part in _user_parts(block, f"{where}.{j}", dialect):
            if part["type"] != "text":
                raise InvalidRequest(
                    f"{where}.{j}: {dialect.target} takes images only in user messages, not here"
                )
            texts.append(part["text"])
    return "\n\n".join(texts)


def _unsupported_block(kind: Any, where: str, dialect: ChatDialect) -> InvalidRequest:
    return InvalidRequest(
        f"{where}.type: content block {kind!r} cannot be sent to {dialect.target}"
    )
