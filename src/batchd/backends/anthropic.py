"""Any Anthropic-compatible upstream: POST {base_url}/v1/messages with the params as sent.

The OpenAI dialect's chat completions go the same way, translated to Messages params and
back (``messages_translate``); a request without ``max_tokens`` asks for the backend's
``max_output_tokens`` where configured, else ``CHAT_MAX_TOKENS`` (which every current
model allows; the Messages API needs a number where chat.completions needs none). An
Anthropic upstream has no embeddings: those are refused.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from batchd.backends.base import OPENAI_CHAT
from batchd.backends.http import HttpAnswer, UpstreamHttp, error_from_answer, retry_after_seconds
from batchd.backends.messages_translate import completion_from_message, messages_request
from batchd.config import BackendConfig
from batchd.errors import InvalidRequest, UpstreamError
from batchd.validation import Params

__all__ = [
    "AnthropicBackend",
    "error_from_response",
    "message_from_body",
    "retry_after_seconds",
]

ANTHROPIC_VERSION = "2023-06-01"
CHAT_MAX_TOKENS = 4096


def error_from_response(status: int, body: bytes, headers: Any, now: float) -> UpstreamError:
    """An UpstreamError from a non-2xx answer in the API's error envelope (or anything).

    The envelope's ``error.type`` is only a hint (``batchd.errors.error_type_for``): a
    proxy in front of the API names types of its own, which never reach a client.
    """
    named_type, message = None, None
    try:
        decoded = msgspec.json.decode(body)
        inner = decoded.get("error") if isinstance(decoded, dict) else None
        if isinstance(inner, dict):
            named_type = inner.get("type")
            if isinstance(inner.get("message"), str):
                message = inner["message"]
    except msgspec.DecodeError:
        pass
    return error_from_answer(status, headers, now, message=message, named_type=named_type)


def message_from_body(body: bytes) -> dict[str, Any]:
    try:
        message = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise UpstreamError(
            "upstream returned a body that is not JSON", upstream_status=502
        ) from None
    if not (isinstance(message, dict) and isinstance(message.get("content"), list)):
        raise UpstreamError("upstream returned JSON that is not a Message", upstream_status=502)
    return message


class AnthropicBackend:
    def __init__(self, config: BackendConfig) -> None:
        assert config.base_url, "checked by BackendConfig"
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.max_retries = config.max_retries
        self._url = f"{config.base_url}/v1/messages"
        self._max_tokens = config.max_output_tokens or CHAT_MAX_TOKENS
        self._count_url = f"{config.base_url}/v1/messages/count_tokens"
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if key := config.api_key():
            headers["x-api-key"] = key
        self._http = UpstreamHttp.for_backend(config, headers)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:
        answer = await self._http.post(self._url, raw, max_tokens=params.max_tokens)
        return message_from_body(_checked(answer))

    async def call_openai(self, endpoint: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        if endpoint != OPENAI_CHAT:
            raise InvalidRequest(f"{endpoint} is not served by Anthropic backends (chat only)")
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidRequest("model: Field required (a string)")
        params = messages_request(body, model=model, default_max_tokens=self._max_tokens)
        answer = _checked(await self._http.post(self._url, msgspec.json.encode(params)))
        message = message_from_body(answer)
        return completion_from_message(message, model=model, created=int(time.time()))

    async def count_tokens(self, request: dict[str, Any], raw: bytes) -> int:  # noqa: ARG002
        """Forwarded as sent to the upstream's own ``/v1/messages/count_tokens``."""
        body = _checked(await self._http.post(self._count_url, raw))
        try:
            counted = msgspec.json.decode(body)
        except msgspec.DecodeError:
            counted = None
        if not (isinstance(counted, dict) and isinstance(counted.get("input_tokens"), int)):
            raise UpstreamError(
                "upstream count_tokens answer has no input_tokens", upstream_status=502
            )
        return int(counted["input_tokens"])


def _checked(answer: HttpAnswer) -> bytes:
    if answer.status >= 300:
        raise error_from_response(answer.status, answer.body, answer.headers, time.time())
    return answer.body
