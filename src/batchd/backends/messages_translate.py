"""OpenAI chat.completions -> Anthropic Messages and back: the reverse of ``openai_translate``.

A chat request bound for an Anthropic-kind backend (or the mock, which answers Messages)
becomes Messages params here, and the Message it gets back a ``chat.completion``. It is
the inverse of the one translation (``batchd.backends.chat``, in ``openai_translate``'s
OpenAI dialect), sharing its tables: a chat body that the forward translation could have
produced comes back unchanged through it (tests/test_messages_translate.py).

Request (``messages_request``):

    system / developer messages         ``system`` (leading ones; joined by blank lines)
    user content: string                the same string
    text parts                          text blocks
    image_url part (data: URL)          a base64 image block; an http(s) URL: a url image
    file part (a base64 PDF data URL)   a base64 document block
    assistant content, refusal          text blocks
    assistant tool_calls                tool_use blocks (arguments: JSON text -> object)
    tool messages                       tool_result blocks in the next user turn;
                                        ``TOOL_ERROR_PREFIX`` marks ``is_error``
    tools (function)                    custom tools (name, description, parameters as
                                        ``input_schema``, strict)
    tool_choice, parallel_tool_calls    ``tool_choice`` (``TOOL_CHOICES``),
                                        ``disable_parallel_tool_use``
    max_completion_tokens | max_tokens  ``max_tokens`` (the backend's limit when absent)
    stop (string or list)               ``stop_sequences``
    temperature (0-1), top_p, top_k     the same; a temperature above 1 is refused
    user                                ``metadata.user_id``
    n = 1, seed, store, metadata, service_tier, stream_options, reasoning_effort,
    prompt_cache_key, safety_identifier, verbosity, a message's ``name``,
    penalties at 0, logprobs false                                  dropped
    anything else (n > 1, logprobs, penalties, logit_bias, response_format other than
    text, audio, modalities, prediction, web_search_options, unknown keys)   InvalidRequest

Response (``completion_from_message``): text blocks joined as ``content``, tool_use blocks
as ``tool_calls``, thinking dropped; ``stop_reason`` as ``finish_reason``
(``FINISH_REASONS``); usage as prompt/completion tokens, cached reads in
``prompt_tokens_details``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from batchd.backends.chat import (
    FINISH_REASONS,
    TOOL_CHOICES,
    TOOL_ERROR_PREFIX,
    call_arguments,
    content_texts,
)
from batchd.errors import InvalidRequest

_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.S)
_DROPPED = frozenset(
    {
        "seed",
        "store",
        "metadata",
        "service_tier",
        "stream",
        "stream_options",
        "reasoning_effort",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
    }
)
_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "temperature",
        "top_p",
        "top_k",
        "user",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "n",
        "response_format",
    }
)
# keys taken at their default value only (and then dropped): what many clients always send
_DEFAULTS: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
}
_REVERSE_TOOL_CHOICES = {chat: messages for messages, chat in TOOL_CHOICES.items()}
TARGET = "an Anthropic backend"

# -- request -----------------------------------------------------------------------------


def messages_request(
    body: Mapping[str, Any], *, model: str, default_max_tokens: int
) -> dict[str, Any]:
    """The Messages params for a chat.completions ``body``, sent as ``model``."""
    _check_keys(body)
    system, messages = _conversation(body.get("messages"))
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": _max_tokens(body, default_max_tokens),
        "messages": messages,
    }
    if system:
        params["system"] = system
    if (stop := body.get("stop")) is not None:
        params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
            raise InvalidRequest(f"temperature: {TARGET} takes 0 to 1, not {temperature!r}")
        params["temperature"] = temperature
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            params[key] = body[key]
    if isinstance(body.get("user"), str):
        params["metadata"] = {"user_id": body["user"]}
    if tools := body.get("tools"):
        params["tools"] = [_custom_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
        if (choice := tool_choice(body)) is not None:
            params["tool_choice"] = choice
    return params


def _check_keys(body: Mapping[str, Any]) -> None:
    """Refuse what would be lost: a key not translated, nor dropped, nor at its default."""
    for key, value in body.items():
        if key in _TRANSLATED or key in _DROPPED or value is None:
            continue
        if key not in _DEFAULTS or value != _DEFAULTS[key]:
            raise InvalidRequest(f"{key}: not supported on {TARGET}")
    check_plain(body, TARGET)


def check_plain(body: Mapping[str, Any], target: str) -> None:
    """The keys a target that answers one plain-text choice takes only at their default."""
    if body.get("n") not in (None, 1):
        raise InvalidRequest(f"n: {target} answers one choice only")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise InvalidRequest(f"response_format: only 'text' can be sent to {target}")
    if body.get("logprobs"):
        raise InvalidRequest(f"logprobs: {target} does not return log probabilities")


def _max_tokens(body: Mapping[str, Any], default: int) -> Any:
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return body[key]
    return default


def _conversation(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: List should have at least 1 item")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: Input should be a valid dictionary")
        role = message.get("role")
        if role in ("system", "developer"):
            if turns:
                raise InvalidRequest(
                    f"{where}.role: a {role} message after the conversation began cannot be "
                    f"sent to {TARGET}"
                )
            system.append(_text_only(message.get("content"), f"{where}.content"))
        elif role == "user":
            _append(turns, "user", _user_blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where)])
        else:
            raise InvalidRequest(f"{where}.role: role {role!r} cannot be sent to {TARGET}")
    if not turns:
        raise InvalidRequest("messages: there is no user message")
    return "\n\n".join(system), [_compact(turn) for turn in turns]


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """A turn of its own, or the previous turn's continuation when the role is the same
    (tool results and the user text after them make one user turn)."""
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _compact(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn of one text block as its string, as the forward translation reads it."""
    blocks = turn["content"]
    if len(blocks) == 1 and blocks[0]["type"] == "text" and set(blocks[0]) == {"type", "text"}:
        return {"role": turn["role"], "content": blocks[0]["text"]}
    return turn


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: Field required (a string or a list of parts)")
    return [_user_block(part, f"{where}.{j}") for j, part in enumerate(content)]


def _user_block(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url")
        if not isinstance(url, str):
            raise InvalidRequest(f"{where}.image_url.url: Field required")
        if match := _DATA_URL.match(url):
            source = {"type": "base64", "media_type": match["type"], "data": match["data"]}
            return {"type": "image", "source": source}
        if url.startswith(("https://", "http://")):
            return {"type": "image", "source": {"type": "url", "url": url}}
        raise InvalidRequest(f"{where}.image_url.url: a data: URL or an http(s) URL")
    if kind == "file":
        data = (part.get("file") or {}).get("file_data")
        match = _DATA_URL.match(data) if isinstance(data, str) else None
        if match and match["type"] == "application/pdf":
            source = {"type": "base64", "media_type": "application/pdf", "data": match["data"]}
            return {"type": "document", "source": source}
        raise InvalidRequest(f"{where}.file: only an inline PDF (file_data) goes to {TARGET}")
    raise InvalidRequest(f"{where}.type: content part {kind!r} cannot be sent to {TARGET}")


def _text_only(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    blocks = _user_blocks(content, where)
    for j, block in enumerate(blocks):
        if block["type"] != "text":
            raise InvalidRequest(f"{where}.{j}: only text can go here on {TARGET}")
    return "\n\n".join(block["text"] for block in blocks)


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    texts = content_texts(message.get("content"), f"{where}.content", TARGET)
    blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in texts if t]
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        blocks.append({"type": "text", "text": message["refusal"]})
    if message.get("function_call") is not None:
        raise InvalidRequest(f"{where}.function_call: use tool_calls for {TARGET}")
    for j, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{where}.tool_calls.{j}"))
    if not blocks:
        raise InvalidRequest(f"{where}: an assistant message needs content or tool_calls")
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    name, arguments = call_arguments(call, where)
    if not isinstance(call.get("id"), str):
        raise InvalidRequest(f"{where}.id: Field required")
    return {"type": "tool_use", "id": call["id"], "name": name, "input": arguments}


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"{where}.tool_call_id: Field required")
    text = _text_only(message.get("content") or "", f"{where}.content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    if text.startswith(TOOL_ERROR_PREFIX):
        text, block["is_error"] = text.removeprefix(TOOL_ERROR_PREFIX), True
    block["content"] = text
    return block


def _custom_tool(tool: Any, where: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest(f"{where}.type: only function tools can be sent to {TARGET}")
    if not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function.name: Field required")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    custom: dict[str, Any] = {"name": function["name"], "input_schema": schema}
    if isinstance(function.get("description"), str):
        custom["description"] = function["description"]
    if isinstance(function.get("strict"), bool):
        custom["strict"] = function["strict"]
    return custom


def tool_choice(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """A chat request's ``tool_choice`` (and ``parallel_tool_calls``) in the Messages form."""
    choice = body.get("tool_choice")
    translated: dict[str, Any] | None
    if choice is None:
        translated = None
    elif isinstance(choice, str) and choice in _REVERSE_TOOL_CHOICES:
        translated = {"type": _REVERSE_TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest(f"tool_choice: unsupported tool_choice {choice!r}")
    if body.get("parallel_tool_calls") is False:
        translated = translated or {"type": "auto"}
        if translated["type"] != "none":
            translated["disable_parallel_tool_use"] = True
    return translated


# -- response ----------------------------------------------------------------------------


def completion_from_message(
    message: Mapping[str, Any], *, model: str, created: int
) -> dict[str, Any]:
    """The ``chat.completion`` for an Anthropic Message; ``model`` as the client named it."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = msgspec.json.encode(block.get("input") or {}).decode()
            function = {"name": block["name"], "arguments": arguments}
            calls.append({"id": block["id"], "type": "function", "function": function})
    answer: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        answer["tool_calls"] = calls
    finish = FINISH_REASONS.get(message.get("stop_reason") or "end_turn", "stop")
    return {
        "id": "chatcmpl-" + str(message.get("id", "")).removeprefix("msg_"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": answer, "finish_reason": finish, "logprobs": None}],
        "usage": chat_usage(message.get("usage")),
    }


def chat_usage(usage: Any) -> dict[str, Any]:
    """Messages usage as chat usage: the prompt counts cached and cache-written tokens."""
    usage = usage if isinstance(usage, Mapping) else {}
    counts = {
        key: value if isinstance(value := usage.get(key), int) else 0
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
    }
    cached = counts["cache_read_input_tokens"]
    prompt = counts["input_tokens"] + cached + counts["cache_creation_input_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": counts["output_tokens"],
        "total_tokens": prompt + counts["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": cached},
    }
