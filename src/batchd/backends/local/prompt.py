"""Messages params as a chat template takes them: the one translation of
``batchd.backends.chat`` in the template dialect.

Hugging Face chat templates (and vLLM, which uses the same templates) take the chat shape
as Python values: tool call arguments as the input object, and an empty string for the
content beside tool calls. A template is text only, so images and documents are refused
rather than silently lost, and several text blocks of a turn are joined by blank lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchd.backends.chat import ChatDialect, function_tools
from batchd.backends.chat import chat_messages as translate_messages

TEMPLATE = ChatDialect("a local model")


def chat_messages(
    system: str | Sequence[Mapping[str, Any]] | None, messages: Sequence[tuple[str, Any]]
) -> list[dict[str, Any]]:
    """The conversation as chat-template messages; ``messages`` as (role, content) pairs."""
    return translate_messages(system, messages, TEMPLATE)


def chat_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Custom tools as function definitions; None when there are none."""
    return function_tools(tools, TEMPLATE) or None
