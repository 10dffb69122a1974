"""The OpenAI face's wire shapes: files, batches, list pages, output lines, the error envelope.

A line's ``response.request_id`` is ``req_`` and the hex of its ``batch_req_`` id. Each
struct writes every key the ``openai`` SDK's type of the same name declares (``null``
where there is no value), so that its strict mode parses them; ``tests/test_openai_face.py``
proves it through the SDK. Output and error lines are ``BatchRequestOutput``: ``id``,
``custom_id``, ``response`` (``status_code``, ``request_id``, ``body``) and ``error``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from batchd.errors import BatchdError, ErrorType, UpstreamError
from batchd.ids import new_batch_request_id

_encode = msgspec.json.encode

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
# The endpoints an OpenAI batch may name, and the synchronous routes of the same paths.
BATCH_ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions")
# Paths whose errors are written in OpenAI's envelope (the rest of /v1 is Anthropic's).
OPENAI_PATHS = ("/v1/files", "/v1/batches", *BATCH_ENDPOINTS)


def is_openai_path(path: str) -> bool:
    """A path of the OpenAI face, whose errors are written in OpenAI's envelope."""
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


# -- errors -------------------------------------------------------------------------------


class OpenAIErrorObject(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(msgspec.Struct):
    error: OpenAIErrorObject


# batchd's error types in OpenAI's words: (type, code when the error names none).
_OPENAI_TYPES: dict[ErrorType, tuple[str, str | None]] = {
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "permission_error": ("invalid_request_error", "permission_denied"),
    "not_found_error": ("invalid_request_error", "not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "timeout_error": ("server_error", "timeout"),
    "overloaded_error": ("server_error", "overloaded"),
}


def openai_status(status: int) -> int:
    """The HTTP status OpenAI answers for batchd's: 529 (overloaded) is its 503."""
    return 503 if status == 529 else status


def openai_error(
    error_type: ErrorType, message: str, *, param: str | None = None, code: str | None = None
) -> OpenAIErrorResponse:
    kind, default_code = _OPENAI_TYPES[error_type]
    return OpenAIErrorResponse(OpenAIErrorObject(message, kind, param, code or default_code))


def error_of(exc: BatchdError) -> OpenAIErrorResponse:
    return openai_error(exc.error_type, exc.message, param=exc.param, code=exc.code)


# -- files --------------------------------------------------------------------------------


class FileObject(msgspec.Struct, tag_field="object", tag="file"):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None
    status_details: str | None = None


class FileDeleted(msgspec.Struct, tag_field="object", tag="file"):
    id: str
    deleted: bool


class FilePage(msgspec.Struct, tag_field="object", tag="list"):
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- batches ------------------------------------------------------------------------------


class BatchError(msgspec.Struct):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, tag_field="object", tag="list"):
    data: list[BatchError]


class RequestCounts(msgspec.Struct):
    total: int
    completed: int
    failed: int


class OutputExpiresAfter(msgspec.Struct, forbid_unknown_fields=True):
    anchor: Literal["created_at"]
    seconds: Annotated[int, msgspec.Meta(ge=3600, le=2_592_000)]


BatchEndpoint = Literal["/v1/chat/completions", "/v1/embeddings", "/v1/completions"]
# "Set of 16 key-value pairs": keys of at most 64 characters, values of at most 512
Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=16),
]


class CreateBatch(msgspec.Struct, forbid_unknown_fields=True):
    input_file_id: str
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: Metadata | None = None
    output_expires_after: OutputExpiresAfter | None = None


class BatchFields(msgspec.Struct, omit_defaults=True):
    """What an OpenAI batch keeps beside the engine's columns (``batches.dialect_fields``)."""

    endpoint: str
    input_file_id: str
    completion_window: str
    output_file_id: str
    error_file_id: str
    metadata: dict[str, str] | None = None
    model: str | None = None  # the one model of its lines, if they name only one
    errors: list[BatchError] | None = None  # why validation failed the batch


class BatchObject(msgspec.Struct, tag_field="object", tag="batch"):
    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: BatchStatus
    created_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    expires_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    output_file_id: str | None
    error_file_id: str | None
    errors: BatchErrors | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: None = None


class BatchPage(msgspec.Struct, tag_field="object", tag="list"):
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- output and error lines ---------------------------------------------------------------


def output_line(custom_id: str, body: dict[str, Any]) -> bytes:
    """A line of the output file: the upstream's answer to one request."""
    line_id = new_batch_request_id()
    return b'{"id":"%s","custom_id":%s,"response":{"status_code":200,"request_id":"req_%s",' % (
        line_id.encode(),
        _encode(custom_id),
        line_id[10:].encode(),
    ) + b'"body":%s},"error":null}' % _encode(body)


def refused_line(custom_id: str, exc: BatchdError) -> bytes:
    """A line of the error file for a request that got an HTTP error: its status and
    OpenAI's error body, as the upstream (or batchd in its place) answered."""
    status = exc.upstream_status if isinstance(exc, UpstreamError) else exc.status
    line_id = new_batch_request_id()
    return b'{"id":"%s","custom_id":%s,"response":{"status_code":%d,"request_id":"req_%s",' % (
        line_id.encode(),
        _encode(custom_id),
        status,
        line_id[10:].encode(),
    ) + b'"body":%s},"error":null}' % _encode(error_of(exc))


def unrun_line(line_id: str, custom_id: str, code: str, message: str) -> bytes:
    """A line of the error file for a request that never ran (expired, cancelled); its
    ``line_id`` is derived from stored data (``ids.unrun_request_id``), not minted, as the
    line is rendered anew on each read."""
    return b'{"id":"%s","custom_id":%s,"response":null,"error":%s}' % (
        line_id.encode(),
        _encode(custom_id),
        _encode({"code": code, "message": message}),
    )


EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."
