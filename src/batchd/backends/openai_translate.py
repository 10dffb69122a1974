"""Anthropic Messages <-> OpenAI chat.completions, as pure functions of values.

Request (``chat_request``): the conversation and the tools by the one translation of
``batchd.backends.chat``, in the OpenAI dialect (``OPENAI``): JSON-text tool arguments,
and these content parts:

    image block (base64 | url)          an ``image_url`` part (base64 as a ``data:`` URL)
    document block, text source         a ``text`` part (titled ``[document 'title']``)
    document block, base64 PDF          its text, marked (extracted by ``backends/pdf.py``)

and the rest of the body field by field:

    tool_choice                         "auto" "required" {function} "none"
    max_tokens, stop_sequences          ``max_tokens``, ``stop``
    temperature, top_p, top_k           the same (``top_k`` is an extension vLLM/SGLang honour)
    metadata.user_id                    ``user``
    anything else (thinking, service_tier, cache_control, ...)   dropped

Content a chat.completions server cannot take (file, url or content document sources,
built-in tools, images inside tool results, other block types) raises InvalidRequest, so
the request ends ``errored``; nothing the client sent is silently lost.

Response (``message_from_body``): the text and tool calls of the first choice become
``text`` and ``tool_use`` blocks; ``finish_reason`` becomes ``stop_reason`` (a stop
string a server kept in the text is cut off and named, as the API does); usage is carried
over. Errors (``error_from_openai``): the HTTP status decides the Anthropic error
type and whether a retry may help, by the same table and rule as every backend
(``batchd.errors``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from batchd.backends.chat import TOOL_CHOICES, ChatDialect, function_tools
from batchd.backends.chat import chat_messages as translate_messages
from batchd.backends.http import error_from_answer
from batchd.backends.local.tool_calls import arguments_object
from batchd.backends.pdf import marked, pdf_text
from batchd.errors import InvalidRequest, UpstreamError

_SAMPLING = ("temperature", "top_p", "top_k")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# -- request -----------------------------------------------------------------------------


def _media(block: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    """An image as an ``image_url`` part, a document as a ``text`` part."""
    kind = block["type"]
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url(block, where)}}
    if kind == "document":
        return {"type": "text", "text": _document_text(block, where)}
    return None


OPENAI = ChatDialect("an OpenAI-compatible backend", media=_media, wire=True)


def chat_request(params: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """The chat.completions body for Anthropic Messages ``params``, sent as ``model``."""
    body: dict[str, Any] = {"model": model, "messages": chat_messages(params)}
    if params.get("max_tokens") is not None:
        body["max_tokens"] = params["max_tokens"]
    if stop := params.get("stop_sequences"):
        body["stop"] = list(stop)
    for key in _SAMPLING:
        if params.get(key) is not None:
            body[key] = params[key]
    user = (params.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        body["user"] = user
    if tools := chat_tools(params):
        body["tools"] = tools
        if choice := params.get("tool_choice"):
            body.update(_tool_choice(choice))
    return body


def chat_tools(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return function_tools(params.get("tools"), OPENAI)


def chat_messages(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI ``messages`` list: the system prompt first, then every turn in order."""
    turns = ((m["role"], m["content"]) for m in params.get("messages") or ())
    return translate_messages(params.get("system"), turns, OPENAI)


def _tool_choice(choice: Mapping[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    translated: dict[str, Any]
    if kind in TOOL_CHOICES:
        translated = {"tool_choice": TOOL_CHOICES[kind]}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        translated = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise InvalidRequest(f"tool_choice: unsupported tool_choice {dict(choice)!r}")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        translated["parallel_tool_calls"] = False
    return translated


def _image_url(block: Mapping[str, Any], where: str) -> str:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequest(
        f"{where}.source: image source {kind!r} cannot be sent to an OpenAI-compatible "
        "backend; use a base64 or url source"
    )


def _document_text(block: Mapping[str, Any], where: str) -> str:
    source = block.get("source") or {}
    kind, title = source.get("type"), block.get("title")
    if kind == "text" and isinstance(source.get("data"), str):
        return f"[document {title!r}]\n{source['data']}" if title else str(source["data"])
    if kind == "base64" and source.get("media_type") == "application/pdf":
        return marked(title, pdf_text(source.get("data"), where))  # backends inline PDFs first
    raise InvalidRequest(
        f"{where}.source: a document with source {kind!r} cannot be sent to an "
        "OpenAI-compatible backend; send a text source or a base64 PDF"
    )


# -- response ----------------------------------------------------------------------------


def message_from_body(
    body: bytes, *, model: str, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    """The Anthropic Message for a chat.completion answer; ``model`` as the client named it."""
    try:
        completion = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise _malformed("upstream returned a body that is not JSON") from None
    return message_from_completion(completion, model=model, stop_sequences=stop_sequences)


def message_from_completion(
    completion: Any, *, model: str, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    choice = _first_choice(completion)
    answer = choice["message"]
    content: list[dict[str, Any]] = []
    text, refusal = answer.get("content"), answer.get("refusal")
    calls = answer.get("tool_calls") or ()
    text = text if isinstance(text, str) else ""
    stop_reason, stop_sequence = _stop_reason(choice, bool(calls), text, stop_sequences)
    if stop_sequence is not None:  # cut before it, where a server kept it in the text
        text = text.partition(stop_sequence)[0]
    if text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    message_id = _clean_id(completion.get("id"), "chatcmpl-") or _digest(completion)
    for i, call in enumerate(calls):
        content.append(_tool_use(call, f"{message_id}/{i}"))
    if isinstance(refusal, str) and refusal and stop_reason == "end_turn":
        stop_reason = "refusal"
    return {
        "id": "msg_" + message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(completion.get("usage")),
    }


def _first_choice(completion: Any) -> dict[str, Any]:
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise _malformed("upstream returned JSON that is not a chat completion")
    if not isinstance(choices[0].get("message"), dict):
        raise _malformed("upstream chat completion has no message")
    return choices[0]


def _tool_use(call: Any, fallback_id: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)):
        raise _unusable(f"upstream returned a tool call without a function name: {call!r}")
    name, arguments = function["name"], arguments_object(function.get("arguments"))
    if arguments is None:
        raise _unusable(
            f"upstream called tool {name!r} with arguments that are not a JSON object: "
            f"{function.get('arguments')!r:.200}"
        )
    call_id = _clean_id(call.get("id")) or _digest(fallback_id)
    tool_id = call_id if call_id.startswith("toolu_") else "toolu_" + call_id
    return {"type": "tool_use", "id": tool_id, "name": name, "input": arguments}


def _stop_reason(
    choice: Mapping[str, Any], calls: bool, text: str, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    """The API's stop_reason and stop_sequence for a choice.

    vLLM names the stop string that ended the text in ``stop_reason`` (and cuts it off).
    Other servers finish a stop string with a plain ``stop``, and some keep the string in
    the text (``transformers serve``): the client's stop sequence found first in the text
    is then the one that ended it, as no server goes on past one. A server that cuts the
    string off and does not say which leaves nothing to tell it from a natural end.
    """
    finish = choice.get("finish_reason")
    if finish == "length":
        return "max_tokens", None
    if calls:
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    if (found := first_stop_sequence(text, stop_sequences)) is not None:
        return "stop_sequence", found
    return "end_turn", None


def first_stop_sequence(text: str, stop_sequences: Sequence[str]) -> str | None:
    """The stop sequence a generation of ``text`` would have met first: the one whose
    first occurrence ends earliest (of two ending together, the longer)."""
    best: tuple[int, int] | None = None
    found = None
    for sequence in stop_sequences:
        at = text.find(sequence) if sequence else -1
        if at >= 0 and (best is None or (at + len(sequence), at) < best):
            best, found = (at + len(sequence), at), sequence
    return found


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else 0
    output = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) and 0 <= cached <= prompt else 0
    return {
        "input_tokens": prompt - cached,
        "output_tokens": output if isinstance(output, int) else 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _clean_id(value: Any, prefix: str = "") -> str:
    if not isinstance(value, str):
        return ""
    return _ID_UNSAFE.sub("_", value.removeprefix(prefix))


def _digest(value: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(value)).hexdigest()[:24]


def _malformed(message: str) -> UpstreamError:
    return UpstreamError(message, upstream_status=502)


def _unusable(message: str) -> UpstreamError:
    """An answer that will not improve by asking again: the request ends ``errored``."""
    return UpstreamError(message, upstream_status=502, retryable=False)


# -- errors ------------------------------------------------------------------------------


def error_from_openai(
    status: int, body: bytes, headers: Mapping[str, str], now: float
) -> UpstreamError:
    """An UpstreamError for a non-2xx answer of an OpenAI-compatible server: its type and
    retry verdict by the HTTP status, as for every backend (``error_from_answer``); the
    body's own ``type`` is OpenAI's vocabulary, not the API's, and is not consulted."""
    return error_from_answer(status, headers, now, message=_error_message(body))


def _error_message(body: bytes) -> str | None:
    """The message of ``{"error": {"message"}}``, ``{"error": "..."}``, vLLM's
    ``{"object": "error", "message"}`` or FastAPI's ``{"detail"}``."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(decoded, dict):
        return None
    error = decoded.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for candidate in (error, decoded.get("message"), decoded.get("detail")):
        if isinstance(candidate, str) and candidate:
            return candidate
        if isinstance(candidate, list) and candidate:
            return msgspec.json.encode(candidate).decode()[:500]
    return None
