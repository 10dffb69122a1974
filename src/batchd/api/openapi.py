"""The OpenAPI document at /openapi.json: FastAPI's, with what it cannot know added.

FastAPI sees the routes and their parameters. The routes read their bodies raw (msgspec,
under a size limit), answer hand-encoded JSON and every error through one renderer, so
the request bodies and responses are described here (their schemas in
``schemas/openapi.py``): each operation's success body and the statuses it can fail with,
all in the error envelope with a ``request-id`` header. FastAPI's own 422 is dropped:
batchd answers 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from batchd.schemas.openapi import SCHEMAS

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
    404: "No such batch in the key's workspace, or no backend serves the model",
    408: "The request body stopped arriving",
    413: "The request body is over the server's limit",
    429: "Too many uploads or request bodies in progress, or the upstream's rate limit",
    500: "An unexpected error",
    502: "The upstream failed or refused batchd's credentials",
    503: "The database or the upstream is unavailable for now",
    504: "The upstream timed out",
    529: "The upstream is overloaded",
}

_BATCH = "/v1/messages/batches/{batch_id}"
_UPSTREAM = (404, 408, 413, 429, 502, 503, 504, 529)
_JSONL = "JSONL"  # results: application/x-jsonl, one MessageBatchIndividualResponse a line
# (method, path): (the success body's schema, its error statuses besides 401 and 500)
OPERATIONS: dict[tuple[str, str], tuple[str, tuple[int, ...]]] = {
    ("post", "/v1/messages/batches"): ("MessageBatch", (400, 408, 413, 429, 503)),
    ("get", "/v1/messages/batches"): ("MessageBatchList", (400, 404, 503)),
    ("get", _BATCH): ("MessageBatch", (404, 503)),
    ("post", f"{_BATCH}/cancel"): ("MessageBatch", (400, 404, 503)),
    ("delete", _BATCH): ("DeletedMessageBatch", (400, 404, 503)),
    ("get", f"{_BATCH}/results"): (_JSONL, (400, 404, 503)),
    ("post", "/v1/messages"): ("Message", (400, *_UPSTREAM)),
    ("post", "/v1/messages/count_tokens"): ("TokenCount", (400, *_UPSTREAM)),
    ("get", "/v1/models"): ("ModelList", ()),
    ("get", "/status/backends"): ("BackendStatusList", ()),
    ("get", "/healthz"): ("Health", ()),
}
PUBLIC = {("get", "/healthz")}
REQUEST_BODIES = {
    ("post", "/v1/messages/batches"): "CreateBatchRequest",
    ("post", "/v1/messages"): "MessageParams",
    ("post", "/v1/messages/count_tokens"): "CountTokensParams",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(method: str, path: str) -> dict[str, Any]:
    body, errors = OPERATIONS[(method, path)]
    if body == _JSONL:
        content = {"application/x-jsonl": {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": _ref(body)}}
    if (method, path) == ("post", "/v1/messages"):
        content["text/event-stream"] = {"schema": {"type": "string"}}  # "stream": true
    responses = {
        "200": {"description": _DESCRIPTIONS[200], "headers": _REQUEST_ID, "content": content}
    }
    statuses = sorted({*errors, 500} | (set() if (method, path) in PUBLIC else {401}))
    for status in statuses:
        responses[str(status)] = {
            "description": _DESCRIPTIONS[status],
            "headers": _REQUEST_ID,
            "content": {"application/json": {"schema": _ref("ErrorResponse")}},
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
            if (method, path) in REQUEST_BODIES:
                schema = _ref(REQUEST_BODIES[(method, path)])
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                }
            _plain_query_strings(operation)
            if (method, path) in PUBLIC:
                operation["security"] = []
    document["components"] = {
        "schemas": SCHEMAS,
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
