"""Any OpenAI-compatible upstream (vLLM, SGLang, Ollama, ...): chat.completions, translated.

URLs: requests go to ``{base_url}/v1/chat/completions``, or ``{base_url}/chat/completions``
when ``base_url`` already ends with ``/v1``; a path prefix in ``base_url`` is kept. Token
counts come from ``/tokenize`` beside ``/v1`` (vLLM, SGLang), else from an estimate.

The OpenAI dialect (``call_openai``) is the upstream's own: the body goes as it came to
the same path under the upstream's ``/v1`` (``NATIVE_ENDPOINTS``), with nothing translated
and nothing dropped; only ``model`` is replaced where ``upstream_model`` is configured
(and the answer names the client's model again).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec

from batchd.backends.base import CALL_PRIORITY, OPENAI_CHAT
from batchd.backends.estimate import estimate_input_tokens
from batchd.backends.http import UpstreamHttp
from batchd.backends.openai_translate import (
    chat_messages,
    chat_request,
    chat_tools,
    error_from_openai,
    message_from_body,
)
from batchd.backends.pdf import PdfExtractor, PdfLimits
from batchd.config import BackendConfig
from batchd.errors import InvalidRequest, UpstreamError
from batchd.validation import Params

log = logging.getLogger(__name__)

# what an OpenAI-compatible server answers natively, forwarded as sent
NATIVE_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses"}
)


def api_base(base_url: str) -> str:
    """``base_url`` with ``/v1`` appended, unless it already ends with it."""
    base_url = base_url.rstrip("/")
    return base_url if base_url.endswith("/v1") else f"{base_url}/v1"


def server_root(base_url: str) -> str:
    """``base_url`` without a trailing ``/v1``: where vLLM and SGLang serve ``/tokenize``."""
    return base_url.rstrip("/").removesuffix("/v1")


class OpenAIBackend:
    def __init__(self, config: BackendConfig) -> None:
        assert config.base_url, "checked by BackendConfig"
        self.name = config.name
        self.max_concurrency = config.max_concurrency
        self.max_retries = config.max_retries
        self._model = config.upstream_model
        self._send_priority = config.send_priority
        self._api_base = api_base(config.base_url)
        self._chat_url = f"{self._api_base}/chat/completions"
        self._tokenize_url = f"{server_root(config.base_url)}/tokenize"
        self._pdfs = PdfExtractor(
            PdfLimits(
                max_pages=config.pdf_max_pages,
                max_characters=config.pdf_max_characters,
                cpu_seconds=config.pdf_cpu_seconds,
                workers=config.pdf_workers,
                workers_per_key=config.pdf_workers_per_key,
            )
        )
        headers = {"content-type": "application/json"}
        if key := config.api_key():
            headers["authorization"] = f"Bearer {key}"
        self._http = UpstreamHttp.for_backend(config, headers)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:
        request = msgspec.json.decode(raw)
        if b"application/pdf" in raw:  # read in a child process, under limits
            request = await self._pdfs.inline_pdfs(request)
        body = chat_request(request, model=self._model or params.model)
        if self._send_priority:  # vLLM --scheduling-policy priority: lower goes first
            body["priority"] = CALL_PRIORITY.get()
        data = msgspec.json.encode(body)
        answer = await self._http.post(self._chat_url, data, max_tokens=params.max_tokens)
        if answer.status >= 300:
            raise error_from_openai(answer.status, answer.body, answer.headers, time.time())
        return message_from_body(
            answer.body, model=params.model, stop_sequences=params.stop_sequences or ()
        )

    async def call_openai(self, endpoint: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
        if endpoint not in NATIVE_ENDPOINTS:
            raise InvalidRequest(f"{endpoint} is not forwarded to OpenAI-compatible backends")
        sent = dict(body)
        if self._model:
            sent["model"] = self._model
        if self._send_priority and endpoint == OPENAI_CHAT:  # lower goes first (vLLM)
            sent["priority"] = CALL_PRIORITY.get()
        if sent != body:
            raw = msgspec.json.encode(sent)
        url = self._api_base + endpoint.removeprefix("/v1")
        answer = await self._http.post(url, raw)
        if answer.status >= 300:
            raise error_from_openai(answer.status, answer.body, answer.headers, time.time())
        try:
            decoded = msgspec.json.decode(answer.body)
        except msgspec.DecodeError:
            decoded = None
        if not isinstance(decoded, dict):
            raise UpstreamError(
                "upstream returned a body that is not a JSON object", upstream_status=502
            )
        if self._model and "model" in decoded:
            decoded["model"] = body.get("model")
        return decoded

    async def count_tokens(self, request: dict[str, Any], raw: bytes) -> int:
        """The upstream's own count from ``/tokenize``, else an estimate (see estimate.py)."""
        if b"application/pdf" in raw:
            request = await self._pdfs.inline_pdfs(request)
        messages = chat_messages(request)
        tools = chat_tools(request)
        tokenize: dict[str, Any] = {"model": self._model or request["model"], "messages": messages}
        if tools:
            tokenize["tools"] = tools
        counted = await self._tokenize(tokenize)
        return counted if counted is not None else estimate_input_tokens(None, messages, tools)

    async def _tokenize(self, body: dict[str, Any]) -> int | None:
        try:
            answer = await self._http.post(self._tokenize_url, msgspec.json.encode(body))
        except UpstreamError as exc:
            log.info("backend %s: /tokenize failed (%s); estimating", self.name, exc.message)
            return None
        try:
            decoded = msgspec.json.decode(answer.body) if answer.status < 300 else None
        except msgspec.DecodeError:
            decoded = None
        count = decoded.get("count") if isinstance(decoded, dict) else None
        if not isinstance(count, int):
            log.info(
                "backend %s: /tokenize answered HTTP %d without a count; estimating",
                self.name,
                answer.status,
            )
            return None
        return count
