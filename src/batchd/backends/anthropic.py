"""Any Anthropic-compatible upstream: POST {base_url}/v1/messages with the params as sent."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import aiohttp
import msgspec

from batchd.config import BackendConfig
from batchd.errors import UpstreamError
from batchd.validation import Params

ANTHROPIC_VERSION = "2023-06-01"
_RETRYABLE = frozenset({408, 409, 429})


def retry_after_seconds(headers: Any, now: float) -> float | None:
    """The delay an upstream asks for: ``retry-after-ms``, then ``retry-after`` (s or date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def error_from_response(status: int, body: bytes, headers: Any, now: float) -> UpstreamError:
    """An UpstreamError from a non-2xx answer in the API's error envelope (or anything)."""
    error_type, message = None, f"upstream answered HTTP {status}"
    try:
        decoded = msgspec.json.decode(body)
        inner = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(inner, dict):
            error_type = inner.get("type") if isinstance(inner.get("type"), str) else None
            if isinstance(inner.get("message"), str):
                message = inner["message"]
    except msgspec.DecodeError:
        pass
    retryable = status in _RETRYABLE or status >= 500
    should_retry = headers.get("x-should-retry")
    if should_retry in ("true", "false"):
        retryable = should_retry == "true"
    return UpstreamError(
        message,
        status=status,
        error_type=error_type,
        retryable=retryable,
        retry_after=retry_after_seconds(headers, now),
    )


def message_from_body(body: bytes) -> dict[str, Any]:
    try:
        message = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise UpstreamError(
            "upstream returned a body that is not JSON", status=502, retryable=True
        ) from None
    if not (isinstance(message, dict) and isinstance(message.get("content"), list)):
        raise UpstreamError(
            "upstream returned JSON that is not a Message", status=502, retryable=True
        )
    return message


class AnthropicBackend:
    def __init__(self, config: BackendConfig) -> None:
        assert config.base_url, "checked by BackendConfig"
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.max_retries = config.max_retries
        self._url = f"{config.base_url}/v1/messages"
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        self._headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if key := config.api_key():
            self._headers["x-api-key"] = key
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=0)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        assert self._session is not None, "backend not started"
        try:
            async with self._session.post(self._url, data=raw, headers=self._headers) as response:
                body = await response.read()
                if response.status >= 300:
                    raise error_from_response(response.status, body, response.headers, time.time())
        except TimeoutError:
            raise UpstreamError(
                "upstream timed out", status=504, error_type="timeout_error", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"upstream connection failed: {exc.__class__.__name__}: {exc}",
                status=502,
                error_type="api_error",
                retryable=True,
            ) from None
        return message_from_body(body)
