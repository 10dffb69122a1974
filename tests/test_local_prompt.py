"""Messages params as chat-template input (batchd.backends.local.prompt): pure, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from batchd.backends.local.prompt import chat_messages, chat_tools
from batchd.backends.openai_translate import chat_messages as openai_messages
from batchd.errors import InvalidRequest

TEXT = {"type": "text", "text": "hi"}
TOOL_USE = {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}
CALL = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}


@pytest.mark.parametrize(
    ("system", "messages", "expected"),
    [
        # a plain string turn
        (None, [("user", "hi")], [{"role": "user", "content": "hi"}]),
        # system as a string comes first
        ("be brief", [("user", "hi")], [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
        # system as text blocks, joined
        ([TEXT, {"type": "text", "text": "there"}], [("user", "x")], [
            {"role": "system", "content": "hi\n\nthere"}, {"role": "user", "content": "x"}]),
        # text blocks of a turn are joined; thinking blocks are dropped
        (None, [("assistant", [{"type": "thinking", "thinking": "t"}, TEXT])], [
            {"role": "assistant", "content": "hi"}]),
        # an assistant tool call becomes tool_calls with the input as arguments
        (None, [("assistant", [TOOL_USE])], [
            {"role": "assistant", "content": "", "tool_calls": [CALL]}]),
        # a tool result becomes a tool message, before the rest of the user's turn
        (None, [("user", [TEXT, {"type": "tool_result", "tool_use_id": "t1", "content": "42"}])], [
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
            {"role": "user", "content": "hi"}]),
        # a tool result alone: no empty user message after it; errors are marked
        (None, [("user", [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                           "content": [TEXT]}])], [
            {"role": "tool", "tool_call_id": "t1", "content": "[tool error] hi"}]),
    ],
)  # fmt: skip
def test_chat_messages(system: Any, messages: Any, expected: list[dict[str, Any]]) -> None:
    assert chat_messages(system, messages) == expected


@pytest.mark.parametrize(
    ("block", "where"),
    [
        # images have no place in a text chat template
        ({"type": "image", "source": {"type": "url", "url": "u"}}, "messages.0.content.0"),
        # nor documents
        ({"type": "document", "source": {"type": "text", "data": "d"}}, "messages.0.content.0"),
    ],
)
def test_unsupported_blocks_are_refused(block: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest, match=where):
        chat_messages(None, [("user", [block])])


def test_tools_become_function_definitions() -> None:
    tools = [{"name": "f", "description": "does f", "input_schema": {"type": "object"}}]
    assert chat_tools(tools) == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "description": "does f"},
        }
    ]


@pytest.mark.parametrize(
    ("tool", "where"),
    [
        # a server tool has no function to call
        ({"type": "web_search_20250305", "name": "web_search"}, r"tools\.0\.type"),
        # a custom tool needs its input_schema, as on the API (none is made up)
        ({"name": "f", "description": "no schema"}, r"tools\.0\.input_schema"),
    ],
)
def test_tools_the_template_cannot_take_are_refused(tool: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidRequest, match=where):
        chat_tools([tool])


def test_a_tool_call_without_an_id_is_refused() -> None:
    call = {"type": "tool_use", "name": "f", "input": {}}
    with pytest.raises(InvalidRequest, match=r"messages\.0\.content\.0: a tool_use block"):
        chat_messages(None, [("assistant", [call])])


def _turns(params: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in params["messages"]]


@pytest.mark.parametrize(
    "params",
    [
        # system blocks, a string turn, thinking dropped
        {"system": [TEXT, TEXT], "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}, TEXT]}]},
        # tool results first, marked when they failed, then the rest of the turn
        {"messages": [{"role": "user", "content": [
            TEXT, {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "x"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [TEXT]}]}]},
        # a role "system" turn
        {"messages": [{"role": "system", "content": [TEXT]}, {"role": "user", "content": "q"}]},
    ],
)  # fmt: skip
def test_the_template_and_openai_share_one_translation(params: dict[str, Any]) -> None:
    assert chat_messages(params.get("system"), _turns(params)) == openai_messages(params)


def test_no_tools_is_none() -> None:
    assert chat_tools(None) is None
    assert chat_tools([]) is None
