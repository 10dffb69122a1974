"""JSONL result lines: their shape as types, their bytes spliced.

``MessageBatchIndividualResponse`` is one line, as the SDK's model of the same name. Lines
are built by splicing bytes, faster than encoding the types (0.4 against 0.7 µs a canceled
line, 2.4 against 2.7 µs a short succeeded one): ``custom_id`` matches
``[a-zA-Z0-9_-]{1,64}``, so it needs no JSON escaping, and a stored message is compact
JSON already. ``tests/test_wire.py`` proves each splice decodes as the type.
"""

from __future__ import annotations

from typing import Any

import msgspec

from batchd.errors import ErrorType
from batchd.schemas.errors import ErrorResponse, error_envelope
from batchd.schemas.messages import Message

_encode = msgspec.json.encode


class MessageBatchSucceededResult(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="succeeded"
):
    message: Message


class MessageBatchErroredResult(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="errored"
):
    error: ErrorResponse


class MessageBatchCanceledResult(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="canceled"
):
    pass


class MessageBatchExpiredResult(
    msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="expired"
):
    pass


MessageBatchResult = (
    MessageBatchSucceededResult
    | MessageBatchErroredResult
    | MessageBatchCanceledResult
    | MessageBatchExpiredResult
)


class MessageBatchIndividualResponse(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: str
    result: MessageBatchResult


def succeeded_line(custom_id: str, message: dict[str, Any]) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"succeeded","message":%s}}' % (
        custom_id.encode(),
        _encode(message),
    )


def errored_line(custom_id: str, error_type: ErrorType, message: str) -> bytes:
    """An errored result. ``request_too_large`` is the type of an HTTP 413 answer only: the
    SDK's result-line error is a union without it (strict parsing fails on it), so inside a
    result line an upstream's 413 is the request's ``invalid_request_error``."""
    if error_type == "request_too_large":
        error_type = "invalid_request_error"
    return b'{"custom_id":"%s","result":{"type":"errored","error":%s}}' % (
        custom_id.encode(),
        _encode(error_envelope(error_type, message, None)),
    )


def canceled_line(custom_id: str) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"canceled"}}' % custom_id.encode()


def expired_line(custom_id: str) -> bytes:
    return b'{"custom_id":"%s","result":{"type":"expired"}}' % custom_id.encode()
