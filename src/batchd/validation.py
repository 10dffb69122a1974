"""Pure checks of what clients send.

``parse_create_body`` checks a create-batch envelope (the requests list, each
``custom_id`` and its uniqueness, counts) and keeps each request's ``params`` as the
exact bytes received, so nothing the client sent is lost or re-encoded.
``check_params`` checks one request's Messages params; a failure there becomes that
request's ``errored`` result, never a failed create. ``check_count_tokens`` checks a
count_tokens body the same way, without ``max_tokens``.
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from batchd.domain import RawParams, RequestState
from batchd.errors import InvalidRequest
from batchd.schemas.batches import (
    CUSTOM_ID_PATTERN,
    BatchRequest,
    CreateBatchRequest,
    RetryBatchRequest,
)
from batchd.schemas.messages import Content, CountTokensParams, InputMessage, MessageParams

T = TypeVar("T")
# msgspec's words for a broken constraint, in the API's own (pydantic's) words
_PHRASES = [
    (re.compile(r"Expected `str` of length >= (\d+)"), r"String should have at least \1 character"),
    (re.compile(r"Expected `str` of length <= (\d+)"), r"String should have at most \1 characters"),
    (re.compile(r"Expected `str` matching regex (.*)"), r"String should match pattern \1"),
    (re.compile(r"Expected `str`, got .*"), "Input should be a valid string"),
    (
        re.compile(r"Expected `array` of length >= 1"),
        "List should have at least 1 item after validation, not 0",
    ),
]


@dataclass(frozen=True, slots=True)
class BatchItem:
    custom_id: str
    params: RawParams


Params = MessageParams  # the name the backends know it by

_envelope_decoder = msgspec.json.Decoder(CreateBatchRequest)
_params_decoder = msgspec.json.Decoder(MessageParams)
_count_tokens_decoder = msgspec.json.Decoder(CountTokensParams)
_retry_decoder = msgspec.json.Decoder(RetryBatchRequest)
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
# Arrays and objects nested deeper than this in one request's params are refused, so that
# no later walk over the JSON (estimates, translation, encoders) meets unbounded nesting.
MAX_DEPTH = 128
_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _field_error(error: msgspec.MsgspecError, prefix: str = "") -> str:
    """Turn msgspec's "X - at `$.a[0].b`" into "a.0.b: X"."""
    match = _PATH.match(str(error))
    assert match is not None
    message, path = match["msg"], match["path"] or ""
    path = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        path = f"{path}.{missing[1]}".lstrip(".")
        message = "Field required"
    elif message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        path = f"{path}.{field}".lstrip(".")
        message = "Extra inputs are not permitted"
    else:
        message = _in_api_words(message)
    path = ".".join(p for p in (prefix, path) if p)
    return f"{path}: {message}" if path else message


def _in_api_words(message: str) -> str:
    for phrase, words in _PHRASES:
        if phrase.fullmatch(message):
            return phrase.sub(words, message)
    return message


def _decode(decoder: msgspec.json.Decoder[T], raw: RawParams | bytearray, what: str) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(_field_error(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's decoder recurses once per level of nesting
        raise InvalidRequest(f"{what} is nested too deeply") from None


def parse_create_body(body: bytes | bytearray, *, max_requests: int) -> list[BatchItem]:
    """Decode and check a create-batch body; raise InvalidRequest with the first fault."""
    if not body or body.isspace():  # (strip() would copy the whole body)
        raise InvalidRequest("request body is empty: expected a JSON object with `requests`")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small objects: the collector would dominate the parse
    try:
        envelope = _decode(_envelope_decoder, body, "request body")
        return _check_items(envelope.requests, max_requests)
    finally:
        if gc_was_enabled:
            gc.enable()


def _check_items(requests: list[BatchRequest], max_requests: int) -> list[BatchItem]:
    """What ``CreateBatchRequest`` leaves to code: the count limits, unique custom_ids,
    params an object, and a custom_id that ends in a newline (msgspec matches patterns with
    ``re.search``, where ``$`` also matches before a final newline; JSON Schema's does not)."""
    if not requests:
        raise InvalidRequest("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise InvalidRequest(
            f"requests: List should have at most {max_requests} items after validation, "
            f"not {len(requests)}"
        )
    items = []
    seen: set[str] = set()
    for i, item in enumerate(requests):
        custom_id = item.custom_id
        if custom_id.endswith("\n"):
            message = f"String should match pattern '{CUSTOM_ID_PATTERN}'"
            raise InvalidRequest(f"requests.{i}.custom_id: {message}")
        if custom_id in seen:
            raise InvalidRequest(
                f"requests.{i}.custom_id: duplicate custom_id {custom_id!r}; "
                "each request in a batch needs a unique custom_id"
            )
        seen.add(custom_id)
        if memoryview(item.params)[:1].tobytes() != b"{":
            raise InvalidRequest(f"requests.{i}.params: Input should be a valid dictionary")
        items.append(BatchItem(custom_id, item.params))
    return items


def parse_retry_body(body: bytes | bytearray) -> list[RequestState]:
    """The result types a retry names (none: errored and expired), each once."""
    if not body or body.isspace():
        return [RequestState.ERRORED, RequestState.EXPIRED]
    named = _decode(_retry_decoder, body, "request body").result_types
    return [RequestState(t) for t in dict.fromkeys(named)]


def check_params(raw: RawParams, *, in_batch: bool = True) -> MessageParams:
    """Check one request's Messages params; raise InvalidRequest naming the field."""
    params = _decode(_params_decoder, raw, "params")
    check_depth(raw, "params")
    if params.stream and in_batch:
        raise InvalidRequest("stream: streaming is not supported for batch requests")
    _check_content(params.messages, params.system, params.tools)
    return params


def stored_params(raw: bytes) -> MessageParams:
    """Params that ``check_params`` accepted when the batch was created, decoded again to run.

    Skips the content checks that already passed (about 4% of batchd's samples at a
    fan-out of 1,024 in py-spy); a decode failure still raises InvalidRequest.
    """
    try:
        return _params_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"stored params no longer decode: {exc}") from None


def check_count_tokens(raw: bytes) -> CountTokensParams:
    """Check a count_tokens body; raise InvalidRequest naming the field."""
    params = _decode(_count_tokens_decoder, raw, "request body")
    check_depth(raw, "request body")
    _check_content(params.messages, params.system, params.tools)
    return params


def check_depth(raw: RawParams | bytearray, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise InvalidRequest when the JSON ``raw`` nests arrays and objects over ``limit`` deep.

    Walked with a stack of its own, never by recursion; a document with fewer brackets than
    the limit cannot nest that deep and is not walked at all.
    """
    data = raw if isinstance(raw, bytes | bytearray) else memoryview(raw).tobytes()
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    stack: list[tuple[Any, int]] = [(_decode(_any_decoder, raw, what), 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            raise InvalidRequest(f"{what} is nested too deeply (more than {limit} levels)")
        stack.extend((child, depth + 1) for child in children)


def _check_content(
    messages: list[InputMessage],
    system: Content | None,
    tools: list[dict[str, Any]] | None,
) -> None:
    """What the types' plain dicts leave to code (the document says it in JSON Schema)."""
    for i, message in enumerate(messages):
        if isinstance(message.content, list):
            _check_blocks(message.content, f"messages.{i}.content")
    if isinstance(system, list):
        _check_blocks(system, "system")
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool.get("name"), str):
            raise InvalidRequest(f"tools.{i}.name: Field required")


def _check_blocks(blocks: list[dict[str, Any]], where: str) -> None:
    for j, block in enumerate(blocks):
        if not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}.{j}.type: Field required")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise InvalidRequest(f"{where}.{j}.text: Field required")
