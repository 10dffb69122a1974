"""Reading a local model's tool calls from its text (``tool_calls.py``), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.backends.local.tool_calls import (
    MalformedToolCall,
    ParsedTurn,
    ToolCall,
    ToolCallFormat,
    ToolUse,
    format_of_template,
    parse_tool_calls,
    tool_use_of,
)
from batchd.errors import InvalidRequest

HERMES, LLAMA3, NONE = ToolCallFormat.HERMES, ToolCallFormat.LLAMA3, ToolCallFormat.NONE
CALL = ToolCall("lookup", {"word": "cache"})


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        # plain text: no calls
        ("just words", HERMES, ParsedTurn("just words")),
        # Hermes: one call after some text
        (
            'Looking. <tool_call>\n{"name": "lookup", "arguments": {"word": "cache"}}'
            "\n</tool_call>",
            HERMES,
            ParsedTurn("Looking.", [CALL]),
        ),
        # Hermes: two calls, arguments given as a JSON string (some models do)
        (
            '<tool_call>{"name": "lookup", "arguments": "{\\"word\\": \\"cache\\"}"}</tool_call>'
            '<tool_call>{"name": "lookup"}</tool_call>',
            HERMES,
            ParsedTurn("", [CALL, ToolCall("lookup", {})]),
        ),
        # Llama 3: the turn is the JSON call
        ('{"name": "lookup", "parameters": {"word": "cache"}}', LLAMA3, ParsedTurn("", [CALL])),
        # Llama 3: after the python tag, two calls separated by ";"
        (
            '<|python_tag|>{"name": "lookup", "parameters": {"word": "cache"}}; '
            '{"name": "lookup", "parameters": {}}',
            LLAMA3,
            ParsedTurn("", [CALL, ToolCall("lookup", {})]),
        ),
        # Llama 3: text that merely mentions braces stays text
        ("use {braces} here", LLAMA3, ParsedTurn("use {braces} here")),
        # no format: a tagged call stays text
        (
            '<tool_call>{"name": "lookup"}</tool_call>',
            NONE,
            ParsedTurn('<tool_call>{"name": "lookup"}</tool_call>'),
        ),
    ],
)
def test_parse_tool_calls(text: str, fmt: ToolCallFormat, expected: ParsedTurn) -> None:
    assert parse_tool_calls(text, fmt, {"lookup"}) == expected


@pytest.mark.parametrize(
    ("text", "fmt", "match"),
    [
        # broken JSON
        ('<tool_call>{"name": "lookup", </tool_call>', HERMES, "not JSON"),
        # never closed
        ('<tool_call>{"name": "lookup"}', HERMES, "not closed"),
        # no name
        ('<tool_call>{"arguments": {}}</tool_call>', HERMES, "without a name"),
        # arguments that are not an object
        (
            '<tool_call>{"name": "lookup", "arguments": [1]}</tool_call>',
            HERMES,
            "not a JSON object",
        ),
        # a tool the request does not define
        ('{"name": "delete_all", "parameters": {}}', LLAMA3, "not defined"),
        # Llama 3: a call cut short
        ('{"name": "lookup", "parameters": {"word": ', LLAMA3, "not JSON"),
    ],
)
def test_a_malformed_call_raises(text: str, fmt: ToolCallFormat, match: str) -> None:
    with pytest.raises(MalformedToolCall, match=match):
        parse_tool_calls(text, fmt, {"lookup"})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # Qwen 2.5 / Hermes templates teach the tags
        ("{%- if tools %}...<tool_call>\n{{...}}\n</tool_call>", HERMES),
        # Llama 3.1 teaches the python tag / ipython role
        ("{%- if message.role == 'ipython' %}<|python_tag|>", LLAMA3),
        # a template without tool markers
        ("{{ messages }}", NONE),
        # none at all
        (None, NONE),
    ],
)
def test_format_of_template(template: str | None, expected: ToolCallFormat) -> None:
    assert format_of_template(template) == expected


BOTH = frozenset({"lookup", "fetch"})


@pytest.mark.parametrize(
    ("names", "choice", "expected"),
    [
        # no tools: calls stay text, whatever the choice
        ([], None, ToolUse()),
        ([], {"type": "any"}, ToolUse()),
        # absent or auto: any defined tool, no call required
        (["lookup", "fetch"], None, ToolUse(BOTH)),
        (["lookup", "fetch"], {"type": "auto"}, ToolUse(BOTH)),
        # any: a call to any of them is required
        (["lookup", "fetch"], {"type": "any"}, ToolUse(BOTH, required=True)),
        # tool: that one only, required
        (
            ["lookup", "fetch"],
            {"type": "tool", "name": "fetch"},
            ToolUse(frozenset({"fetch"}), required=True),
        ),
        # none: calls stay text
        (["lookup", "fetch"], {"type": "none"}, ToolUse()),
    ],
)
def test_tool_use_of(names: list[str], choice: dict[str, Any] | None, expected: ToolUse) -> None:
    assert tool_use_of(names, choice) == expected


@pytest.mark.parametrize(
    ("choice", "match"),
    [
        # a tool the request does not define
        ({"type": "tool", "name": "delete_all"}, "not one of the request's tools"),
        # a type the API does not have
        ({"type": "sometimes"}, "unsupported tool_choice type"),
    ],
)
def test_a_bad_tool_choice_is_an_invalid_request(choice: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        tool_use_of(["lookup"], choice)
