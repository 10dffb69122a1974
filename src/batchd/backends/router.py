"""Routing a request's ``model`` to a backend by the configured glob patterns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from batchd.backends.anthropic import AnthropicBackend
from batchd.backends.base import Backend
from batchd.backends.local.backend import transformers_backend, vllm_backend
from batchd.backends.media import policy_for
from batchd.backends.mock import MockBackend
from batchd.backends.openai import OpenAIBackend
from batchd.config import MOCK_MODEL, BackendConfig, Settings
from batchd.errors import InvalidRequest, NotFound
from batchd.schemas.messages import CountTokensParams
from batchd.validation import Params

BUILTIN_MOCK = BackendConfig(name="mock", kind="mock", models=[MOCK_MODEL], max_concurrency=1024)


def backend_configs(settings: Settings) -> list[BackendConfig]:
    """The configured backends, then the built-in mock unless a backend is named ``mock``."""
    configs = list(settings.backends)
    if "mock" not in {c.name for c in configs}:
        configs.append(BUILTIN_MOCK)
    return configs


_KINDS: dict[str, Callable[[BackendConfig], Backend]] = {
    "anthropic": AnthropicBackend,
    "openai": OpenAIBackend,
    "mock": MockBackend,
    "transformers": transformers_backend,
    "vllm": vllm_backend,
}


def build_backend(config: BackendConfig) -> Backend:
    return _KINDS[config.kind](config)


def build_backends(settings: Settings) -> dict[str, Backend]:
    return {config.name: build_backend(config) for config in backend_configs(settings)}


class Router:
    """First configured backend whose pattern matches the model wins."""

    def __init__(self, configs: list[BackendConfig]) -> None:
        self._routes = [(pattern, c.name) for c in configs for pattern in c.models]
        self._cache: dict[str, str | None] = {}
        self._max_tokens = {c.name: c.output_token_limit() for c in configs}
        self._url_policies = {c.name: policy_for(c.allowed_url_hosts) for c in configs}
        self._prefix_order = {c.name for c in configs if c.prefix_order}

    def route(self, model: str) -> str | None:
        if model not in self._cache:
            self._cache[model] = next(
                (name for pattern, name in self._routes if fnmatchcase(model, pattern)), None
            )
        return self._cache[model]

    def check_max_tokens(self, name: str, max_tokens: int) -> None:
        """Raise InvalidRequest when ``max_tokens`` is more than backend ``name`` allows."""
        limit = self._max_tokens[name]
        if max_tokens > limit:
            raise InvalidRequest(
                f"max_tokens: {max_tokens} is more than this model allows here ({limit})"
            )

    def orders_by_prefix(self, name: str) -> bool:
        """Whether backend ``name`` claims a batch's requests in prefix-key order."""
        return name in self._prefix_order

    def backend_for(self, model: str) -> str:
        """The name of the backend serving ``model``; NotFound when none does."""
        name = self.route(model)
        if name is None:
            raise NotFound(f"model: {model!r} is not served here")
        return name

    def check_urls(self, backend: str, params: Params | CountTokensParams) -> None:
        """Refuse (InvalidRequest) a URL source the backend may not fetch."""
        self._url_policies[backend].check(params)

    def check_chat_urls(self, backend: str, body: Mapping[str, Any]) -> None:
        """Refuse (InvalidRequest) a URL in an OpenAI chat body that the backend may not
        fetch: the same policy as ``check_urls``, for the OpenAI dialect."""
        self._url_policies[backend].check_chat(body)

    def model_names(self) -> list[str]:
        """Patterns that name one model exactly (no glob characters)."""
        return [p for p, _ in self._routes if not any(ch in p for ch in "*?[")]
