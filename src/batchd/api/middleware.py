"""ASGI middleware: a ``request-id`` on every response; JSON bodies only on POST."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchd.api.errors import error_response
from batchd.ids import new_request_id


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["request-id"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


UPLOAD_PATH = "/v1/files"


class JsonPostsMiddleware:
    """Every POST says ``content-type: application/json``, else 415 before any route runs;
    but for the one multipart upload, ``POST /v1/files`` (OpenAI's Files API).

    A web page of another site may send a ``text/plain`` or form POST without asking the
    server first; a JSON one needs a CORS preflight, which batchd never grants. The SDK
    sends the header on every POST, bodiless ones included; a POST with no body and no
    content type (``curl -X POST …/cancel``) is let through, since a browser sends such a
    request with an ``Origin`` header, which open mode checks.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = Headers(scope=scope)
            declared = headers.get("content-type")
            media_type = (declared or "").partition(";")[0].strip().lower()
            if media_type == "multipart/form-data" and scope["path"] == UPLOAD_PATH:
                pass  # the OpenAI face's file upload; its key is checked as every other
            elif media_type != "application/json" and (declared or _has_body(headers)):
                message = (
                    f"POST bodies must be JSON: send content-type: application/json "
                    f"(got {declared or 'none'!r})"
                )
                response = error_response(Request(scope), 415, "invalid_request_error", message)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _has_body(headers: Headers) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"
