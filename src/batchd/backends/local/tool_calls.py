"""A local model's tool calls, read from its generated text: pure functions over text.

Models trained for tools write their calls in their own format, which their chat template
teaches them; batchd reads two of them and leaves every other format as text:

* ``hermes`` (Hermes, Qwen 2/2.5/3, many fine-tunes): each call is a JSON object
  ``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>``; the
  text outside the tags is the turn's text.
* ``llama3`` (Llama 3.1-3.3, JSON tool calling): the whole turn is one JSON object
  ``{"name": ..., "parameters": {...}}`` (several separated by ``;``), possibly after the
  ``<|python_tag|>`` marker.

``format_of_template`` picks the format from a chat template's text (``auto``). A call
that is there but cannot be read (broken JSON, no name, arguments that are not an object,
a tool the request does not define) raises ``MalformedToolCall``. Only the standard
library is used, so that any face (the Messages ``tool_use`` blocks, an OpenAI
``tool_calls`` list) can build on the same ``ToolCall`` values.

``tool_use_of`` reads a request's ``tool_choice`` (in the Messages form; the OpenAI face's
is translated to it first): ``none`` leaves the calls as text, ``tool`` lets the model
call that one tool only, ``any`` and ``tool`` require a call (a local model cannot be
forced to make one: a turn without a call is the request's error, not a silent text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from batchd.errors import InvalidRequest


class ToolCallFormat(StrEnum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    NONE = "none"  # calls stay in the text


class MalformedToolCall(ValueError):
    """The model began a tool call that cannot be read."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolUse:
    """What a request lets its model call: the tool names whose calls are read back (None:
    calls stay text), and whether the turn must call one."""

    names: frozenset[str] | None = None
    required: bool = False


def tool_use_of(names: Collection[str] | None, choice: Mapping[str, Any] | None) -> ToolUse:
    """The ``ToolUse`` of a request defining tools ``names`` with ``tool_choice`` ``choice``
    (Messages form: auto, any, tool with its name, none; absent is auto)."""
    kind = (choice or {}).get("type", "auto")
    if not names or kind == "none":
        return ToolUse()
    if kind == "auto":
        return ToolUse(frozenset(names))
    if kind == "any":
        return ToolUse(frozenset(names), required=True)
    name = (choice or {}).get("name")
    if kind == "tool" and isinstance(name, str) and name in names:
        return ToolUse(frozenset({name}), required=True)
    if kind == "tool":
        raise InvalidRequest(f"tool_choice.name: {name!r} is not one of the request's tools")
    raise InvalidRequest(f"tool_choice.type: unsupported tool_choice type {kind!r}")


@dataclass(frozen=True, slots=True)
class ParsedTurn:
    text: str  # the turn's text without its calls
    calls: list[ToolCall] = field(default_factory=list)


_HERMES_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)
_PYTHON_TAG = "<|python_tag|>"
_LLAMA3_START = re.compile(r'\s*(<\|python_tag\|>|\{\s*"name"\s*:)')


def format_of_template(template: str | None) -> ToolCallFormat:
    """The tool-call format a chat template teaches its model, by the markers it writes."""
    if not template:
        return ToolCallFormat.NONE
    if "<tool_call>" in template:
        return ToolCallFormat.HERMES
    if _PYTHON_TAG in template or ("ipython" in template and '"parameters"' in template):
        return ToolCallFormat.LLAMA3
    return ToolCallFormat.NONE


def parse_tool_calls(
    text: str, fmt: ToolCallFormat, tools: Collection[str] | None = None
) -> ParsedTurn:
    """The turn's text and its calls in ``fmt``; ``tools``, where given, are the names a
    call may use. Raises MalformedToolCall for a call that is there but unreadable."""
    if fmt is ToolCallFormat.HERMES:
        parsed = _hermes(text)
    elif fmt is ToolCallFormat.LLAMA3:
        parsed = _llama3(text)
    else:
        return ParsedTurn(text)
    if tools is not None:
        for call in parsed.calls:
            if call.name not in tools:
                raise MalformedToolCall(
                    f"the model called tool {call.name!r}, not defined (or not the one "
                    "tool_choice names)"
                )
    return parsed


def _hermes(text: str) -> ParsedTurn:
    calls = []
    for match in _HERMES_CALL.finditer(text):
        if not match[2]:
            raise MalformedToolCall(f"a <tool_call> is not closed: {match[0]!r:.200}")
        calls.append(_call(match[1], "arguments"))
    if not calls:
        return ParsedTurn(text)
    return ParsedTurn(_HERMES_CALL.sub("", text).strip(), calls)


def _llama3(text: str) -> ParsedTurn:
    if not _LLAMA3_START.match(text):
        return ParsedTurn(text)
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    decoder = json.JSONDecoder()
    calls, at = [], 0
    while at < len(body):
        try:
            value, end = decoder.raw_decode(body, at)
        except json.JSONDecodeError as exc:
            raise MalformedToolCall(f"a tool call is not JSON ({exc}): {body[at:]!r:.200}") from exc
        calls.append(_checked(value, "parameters"))
        at = end
        while at < len(body) and body[at] in " \t\r\n;":
            at += 1
    return ParsedTurn("", calls)


def arguments_object(arguments: Any) -> dict[str, Any] | None:
    """A tool call's arguments as an object: given as one, or as a string holding one (an
    empty string is no arguments); None when they are neither."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    return arguments if isinstance(arguments, dict) else None


def _call(source: str, arguments_key: str) -> ToolCall:
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise MalformedToolCall(f"a tool call is not JSON ({exc}): {source!r:.200}") from exc
    return _checked(value, arguments_key)


def _checked(value: Any, arguments_key: str) -> ToolCall:
    """A decoded call as a ToolCall: a name, and arguments that are an object (given as
    one, or as a string holding one, as some models write them; absent is empty)."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise MalformedToolCall(f"a tool call without a name: {value!r:.200}")
    arguments = value.get(arguments_key, value.get("arguments", value.get("parameters", {})))
    arguments = arguments_object(arguments)
    if arguments is None:
        raise MalformedToolCall(
            f"tool {value['name']!r} called with arguments that are not a JSON object: "
            f"{value.get(arguments_key)!r:.200}"
        )
    return ToolCall(value["name"], arguments)
