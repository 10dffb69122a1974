"""The error envelope, and the one function that builds it.

``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` is what an
HTTP error answers (``api/errors.py``, ``api/protocol.py``) and what an ``errored`` result
line holds (``schemas/results.py``), with ``request_id`` null there. It parses as the SDK's
``anthropic.types.ErrorResponse``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from batchd.errors import ErrorType


class ErrorObject(msgspec.Struct, forbid_unknown_fields=True):
    type: ErrorType
    message: Annotated[str, msgspec.Meta(min_length=1)]


class ErrorResponse(msgspec.Struct, forbid_unknown_fields=True, tag_field="type", tag="error"):
    error: ErrorObject
    request_id: str | None


def error_envelope(error_type: ErrorType, message: str, request_id: str | None) -> ErrorResponse:
    """The envelope of one error; ``request_id`` is None inside a result line."""
    return ErrorResponse(ErrorObject(error_type, message), request_id)
