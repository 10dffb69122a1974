"""The OpenAPI document at /openapi.json: FastAPI's, with what it cannot know added.

FastAPI sees the routes and their parameters. The routes read their bodies raw (msgspec,
under a size limit), answer msgspec-encoded JSON and every error through one renderer, so
the bodies are named here by their wire types (``batchd.schemas``), whose JSON Schemas
msgspec generates: each operation's request body, its success body, and the statuses it
can fail with, all in the error envelope with a ``request-id`` header. FastAPI's own 422 is
dropped: batchd answers 400. The OpenAI face's paths (``schemas.openai.OPENAI_PATHS``)
answer their errors in OpenAI's envelope.

Three rules JSON Schema cannot say: custom_ids are unique within a batch; ``after_id`` and
``before_id`` are not given together; an integer is written as one (``5``, not ``5.0``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from batchd.schemas.batches import (
    BatchDetails,
    BatchSchedule,
    CreateBatchRequest,
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchList,
    RetryBatchRequest,
)
from batchd.schemas.errors import ErrorResponse
from batchd.schemas.messages import CountTokensParams, Message, MessageParams, MessageTokensCount
from batchd.schemas.models import ModelList
from batchd.schemas.openai import (
    BatchObject,
    BatchPage,
    CreateBatch,
    FileDeleted,
    FileObject,
    FilePage,
    OpenAIErrorResponse,
    is_openai_path,
)
from batchd.schemas.results import MessageBatchIndividualResponse
from batchd.schemas.status import BackendStateList, Health
from batchd.schemas.usage import MessageBatchEstimate, MessageBatchUsage, UsageList
from batchd.schemas.webhooks import (
    CreateWebhookEndpoint,
    DeletedWebhookEndpoint,
    WebhookDeliveryList,
    WebhookEndpointList,
    WebhookEndpointOut,
    WebhookTestOut,
)

_REQUEST_ID = {
    "request-id": {
        "description": "The id of this request, as in the error body's request_id",
        "required": True,
        "schema": {"type": "string", "pattern": "^req_"},
    }
}
_DESCRIPTIONS = {
    200: "Success",
    400: "The request is malformed, or the batch is not in a state that allows it",
    401: "No key, or a key that is not valid",
    403: "Not an operator key; or, on a server without keys, a call from off this machine",
    404: "No such batch in the key's workspace, or no backend serves the model",
    408: "The request body stopped arriving",
    413: "The request body is over the server's limit",
    415: "A POST whose body is not declared application/json",
    429: "Too many uploads or request bodies in progress, or the upstream's rate limit",
    500: "An unexpected error",
    502: "The upstream failed or refused batchd's credentials",
    503: "The database or the upstream is unavailable for now",
    504: "The upstream timed out",
    529: "The upstream is overloaded",
}

_BATCH = "/v1/messages/batches/{batch_id}"
_FILE = "/v1/files/{file_id}"
_OPENAI_BATCH = "/v1/batches/{batch_id}"
_ENDPOINT = "/v1/webhooks/{endpoint_id}"
_UPSTREAM = (404, 408, 413, 429, 502, 503, 504, 529)
_JSONL = MessageBatchIndividualResponse  # results: application/x-jsonl, one of these a line
# (method, path): (the success body's type, its error statuses besides 401 and 500)
OPERATIONS: dict[tuple[str, str], tuple[type[msgspec.Struct], tuple[int, ...]]] = {
    ("post", "/v1/messages/batches"): (MessageBatch, (400, 408, 413, 415, 429, 503)),
    ("get", "/v1/messages/batches"): (MessageBatchList, (400, 404, 503)),
    ("get", _BATCH): (MessageBatch, (404, 503)),
    ("post", f"{_BATCH}/cancel"): (MessageBatch, (400, 404, 415, 503)),
    ("delete", _BATCH): (DeletedMessageBatch, (400, 404, 503)),
    ("get", f"{_BATCH}/results"): (_JSONL, (400, 404, 503)),
    ("get", f"{_BATCH}/schedule"): (BatchSchedule, (404, 503)),
    # batchd's own (README "Beyond the hosted API")
    ("post", f"{_BATCH}/retry"): (MessageBatch, (400, 404, 408, 413, 415, 429, 503)),
    ("get", f"{_BATCH}/details"): (BatchDetails, (404, 503)),
    ("post", "/v1/messages"): (Message, (400, 415, *_UPSTREAM)),
    ("post", "/v1/messages/count_tokens"): (MessageTokensCount, (400, 415, *_UPSTREAM)),
    ("get", "/v1/models"): (ModelList, ()),
    ("get", "/status/backends"): (BackendStateList, (403,)),
    ("get", "/healthz"): (Health, ()),
    # the OpenAI face: its errors in OpenAI's envelope
    ("post", "/v1/files"): (FileObject, (400, 408, 413, 415, 429, 503)),
    ("get", "/v1/files"): (FilePage, (400, 404, 503)),
    ("get", _FILE): (FileObject, (404, 503)),
    ("delete", _FILE): (FileDeleted, (404, 503)),
    ("get", f"{_FILE}/content"): (FileObject, (404, 503)),  # the file's bytes (_BYTES)
    ("post", "/v1/batches"): (BatchObject, (400, 404, 408, 413, 415, 429, 503)),
    ("get", "/v1/batches"): (BatchPage, (400, 404, 503)),
    ("get", _OPENAI_BATCH): (BatchObject, (404, 503)),
    ("post", f"{_OPENAI_BATCH}/cancel"): (BatchObject, (400, 404, 415, 503)),
    # batchd's own: output and error lines recorded so far (_OPENAI_LINES)
    ("get", f"{_OPENAI_BATCH}/output"): (BatchObject, (400, 404, 503)),
    # batchd's own
    ("post", "/v1/messages/batch_estimate"): (MessageBatchEstimate, (400, 408, 413, 415, 429)),
    ("get", f"{_BATCH}/usage"): (MessageBatchUsage, (404, 503)),
    ("get", "/v1/usage"): (UsageList, (400, 503)),
    ("post", "/v1/webhooks"): (WebhookEndpointOut, (400, 408, 413, 415, 503)),
    ("get", "/v1/webhooks"): (WebhookEndpointList, (503,)),
    ("get", _ENDPOINT): (WebhookEndpointOut, (404, 503)),
    ("delete", _ENDPOINT): (DeletedWebhookEndpoint, (404, 503)),
    ("post", f"{_ENDPOINT}/test"): (WebhookTestOut, (404, 415, 503)),
    ("get", f"{_ENDPOINT}/deliveries"): (WebhookDeliveryList, (400, 404, 503)),
}
_BYTES = {("get", f"{_FILE}/content")}  # answered as the stored bytes
_OPENAI_LINES = {("get", f"{_OPENAI_BATCH}/output")}  # lines of OpenAI's output/error files
_UPLOAD = ("post", "/v1/files")  # multipart/form-data: purpose, file
PUBLIC = {("get", "/healthz")}
REQUEST_BODIES: dict[tuple[str, str], type[msgspec.Struct]] = {
    ("post", "/v1/messages/batches"): CreateBatchRequest,
    ("post", "/v1/messages"): MessageParams,
    ("post", "/v1/messages/count_tokens"): CountTokensParams,
    ("post", "/v1/messages/batch_estimate"): CreateBatchRequest,
    ("post", "/v1/webhooks"): CreateWebhookEndpoint,
    ("post", f"{_BATCH}/retry"): RetryBatchRequest,
    ("post", "/v1/batches"): CreateBatch,
}
_UPLOAD_FORM = {
    "type": "object",
    "required": ["purpose", "file"],
    "properties": {
        "purpose": {"type": "string", "enum": ["batch"]},
        "file": {"type": "string", "format": "binary"},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
    },
}
OPTIONAL_BODIES = {("post", f"{_BATCH}/retry")}  # none: errored and expired
_REF_TEMPLATE = "#/components/schemas/{name}"


def _ref(kind: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(name=kind.__name__)}


def schemas() -> dict[str, Any]:
    """The JSON Schema of every type the document names, by name, as msgspec writes it."""
    kinds = {
        ErrorResponse,
        OpenAIErrorResponse,
        *REQUEST_BODIES.values(),
        *(body for body, _ in OPERATIONS.values()),
    }
    _, components = msgspec.json.schema_components(
        sorted(kinds, key=lambda kind: kind.__name__), ref_template=_REF_TEMPLATE
    )
    return components


def _responses(method: str, path: str) -> dict[str, Any]:
    body, errors = OPERATIONS[(method, path)]
    if body is _JSONL:
        # Lines of JSON: a string to OpenAPI 3.1, each line a MessageBatchIndividualResponse.
        content: dict[str, Any] = {
            "application/x-jsonl": {
                "schema": {"type": "string", "x-jsonl-line": _ref(_JSONL)},
            }
        }
    elif (method, path) in _OPENAI_LINES:
        content = {"application/x-jsonl": {"schema": {"type": "string"}}}
    elif (method, path) in _BYTES:
        content = {"application/octet-stream": {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": _ref(body)}}
    if (method, path) == ("post", "/v1/messages"):
        content["text/event-stream"] = {"schema": {"type": "string"}}  # "stream": true
    responses = {
        "200": {"description": _DESCRIPTIONS[200], "headers": _REQUEST_ID, "content": content}
    }
    statuses = sorted({*errors, 500} | (set() if (method, path) in PUBLIC else {401}))
    envelope = OpenAIErrorResponse if is_openai_path(path) else ErrorResponse
    for status in statuses:
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": _ref(envelope)}},
        }
    return responses


def _plain_query_strings(operation: dict[str, Any]) -> None:
    """A query parameter is a string or absent: FastAPI's ``anyOf [string, null]`` becomes
    ``string``."""
    for parameter in operation.get("parameters", []):
        any_of = parameter["schema"].pop("anyOf", None)
        if any_of is not None:
            parameter["schema"].update(next(s for s in any_of if s.get("type") != "null"))


def build_document(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation["responses"] = _responses(method, path)
            if (method, path) == _UPLOAD:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _UPLOAD_FORM}},
                }
            if (method, path) in REQUEST_BODIES:
                schema = _ref(REQUEST_BODIES[(method, path)])
                operation["requestBody"] = {
                    "required": (method, path) not in OPTIONAL_BODIES,
                    "content": {"application/json": {"schema": schema}},
                }
            _plain_query_strings(operation)
            if (method, path) in PUBLIC:
                operation["security"] = []
    document["components"] = {
        "schemas": schemas(),
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        },
    }
    document["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return document


def install(app: FastAPI) -> None:
    """Serve ``build_document(app)``, built on first request."""
    document: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not document:
            document.update(build_document(app))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
