"""Messages params as a chat template takes them: the one translation of
``batchd.backends.chat`` in the template dialect.

Hugging Face chat templates (and vLLM, which uses the same templates) take the chat shape
as Python values: tool call arguments as the input object, and an empty string for the
content beside tool calls. A template is text only, so images and documents are refused
rather than silently lost, and several text blocks of a turn are joined by blank lines.

An OpenAI chat request is already in the chat shape (``template_chat``): only what the
``ChatDialect.wire`` flag says differs is undone (arguments JSON text -> object, null
content -> ""), text parts are joined, ``developer`` is a ``system`` message, and function
tools go as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchd.backends.chat import ChatDialect, call_arguments, content_texts, function_tools
from batchd.backends.chat import chat_messages as translate_messages
from batchd.errors import InvalidRequest

TEMPLATE = ChatDialect("a local model")


def chat_messages(
    system: str | Sequence[Mapping[str, Any]] | None, messages: Sequence[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """The conversation as chat-template messages; ``messages`` as (role, content) pairs."""
    return translate_messages(system, messages, TEMPLATE)


def chat_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Custom tools as function definitions; None when there are none."""
    return function_tools(tools, TEMPLATE) or None


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def template_chat(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """An OpenAI chat request's messages and tools as the chat template takes them."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: List should have at least 1 item")
    chat = [_template_message(m, f"messages.{i}") for i, m in enumerate(messages)]
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(isinstance(t, dict) and t.get("type") == "function" for t in tools)
    ):
        raise InvalidRequest(f"tools: only function tools can be sent to {TEMPLATE.target}")
    return chat, tools or None


def _template_message(message: Any, where: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where}: Input should be a valid dictionary")
    role = message.get("role")
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(f"{where}.tool_call_id: Field required")
        content = _template_text(message.get("content"), f"{where}.content")
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": content}
    if role not in _ROLES:
        raise InvalidRequest(f"{where}.role: role {role!r} cannot be sent to {TEMPLATE.target}")
    turn: dict[str, Any] = {
        "role": _ROLES[role],
        "content": _template_text(message.get("content"), where),
    }
    if role == "assistant" and message.get("tool_calls"):
        turn["tool_calls"] = [
            _template_call(c, f"{where}.tool_calls.{j}")
            for j, c in enumerate(message["tool_calls"])
        ]
    return turn


def _template_text(content: Any, where: str) -> str:
    return "\n\n".join(content_texts(content, where, TEMPLATE.target))


def _template_call(call: Any, where: str) -> dict[str, Any]:
    name, arguments = call_arguments(call, where)
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
