"""The one renderer of errors as HTTP answers: the API's error envelope
(``schemas.errors.error_envelope``) with its status and the ``request-id`` header.

On the OpenAI face's paths (``schemas.openai.OPENAI_PATHS``) the envelope is OpenAI's
(``{"error": {"message", "type", "param", "code"}}``) with OpenAI's status, and the
request id is also sent as ``x-request-id``, the header its SDK reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount

from batchd.api.responses import JSON
from batchd.errors import BatchdError, ErrorType, StoreUnavailable, error_type_for
from batchd.schemas.errors import error_envelope
from batchd.schemas.openai import is_openai_path, openai_error, openai_status

log = logging.getLogger(__name__)


def error_headers(
    status: int, request_id: str | None, *, retryable: bool = False
) -> dict[str, str]:
    """``x-should-retry`` tells the SDK what batchd decided (``BatchdError.retryable``: for
    an upstream's failure, the verdict the engine retried by), not the SDK's own guess from
    the status."""
    headers = {"request-id": request_id} if request_id else {}
    if status in (429, 503):
        headers["retry-after"] = "1"
    headers["x-should-retry"] = "true" if retryable else "false"
    return headers


def error_response(
    request: Request,
    status: int,
    error_type: ErrorType,
    message: str,
    extra_headers: Mapping[str, str] | None = None,
    *,
    retryable: bool = False,
    param: str | None = None,
    code: str | None = None,
) -> JSON:
    request_id = request.scope.get("state", {}).get("request_id")
    headers = {**(extra_headers or {}), **error_headers(status, request_id, retryable=retryable)}
    if is_openai_path(request.url.path):
        if request_id:
            headers["x-request-id"] = request_id
        envelope = openai_error(error_type, message, param=param, code=code)
        return JSON(envelope, status_code=openai_status(status), headers=headers)
    return JSON(
        error_envelope(error_type, message, request_id), status_code=status, headers=headers
    )


async def _batchd_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, BatchdError)
    if isinstance(exc, StoreUnavailable):
        log.warning("store unavailable: %s", exc.message)
    return error_response(
        request,
        exc.status,
        exc.error_type,
        exc.message,
        retryable=exc.retryable,
        param=exc.param,
        code=exc.code,
    )


async def _http_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    error_type = error_type_for(status)
    message = str(exc.detail)
    if status == 404:
        message = f"{request.method} {request.url.path} is not a known route"
    headers = dict(exc.headers or {})
    if status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        headers["allow"] = _allowed_methods(request) or headers.get("allow", "GET, HEAD")
    return error_response(request, status, error_type, message, headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (RFC 9110's ``allow``): Starlette names
    only the first route's, and FastAPI makes one route per method."""
    allowed = [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(
            not isinstance(route, Mount)
            and route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


async def _validation_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
    return error_response(request, 400, "invalid_request_error", f"{where}: {first['msg']}")


async def _client_gone(request: Request, exc: Exception) -> JSON:
    """The client closed its connection before its body was whole: nobody to answer, and
    nothing wrong on our side."""
    assert isinstance(exc, ClientDisconnect)
    log.info("client closed the connection during %s %s", request.method, request.url.path)
    message = "the connection closed before the whole request body arrived"
    return error_response(request, 400, "invalid_request_error", message)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "api_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BatchdError, _batchd_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
