"""Settings: the one place that reads the environment and the TOML file.

Precedence, highest first: command-line flags, ``BATCHD_*`` environment variables, the
TOML file named by ``--config`` / ``BATCHD_CONFIG``, the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources import InitSettingsSource

MOCK_MODEL = "mock"
# The largest max_tokens an upstream backend accepts unless its table says otherwise: the
# most any hosted model generates in one answer today.
DEFAULT_MAX_OUTPUT_TOKENS = 128_000
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# Kinds that run the model inside batchd's own process (``model_path`` instead of base_url).
LOCAL_KINDS = frozenset({"transformers", "vllm"})
ReuseMode = Literal["off", "deterministic", "always"]  # a backend's reuse_answers


class BackendConfig(BaseModel):
    """One ``[[backends]]`` table of the TOML file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["anthropic", "openai", "mock", "transformers", "vllm"]
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] = Field(default_factory=list)
    upstream_model: str | None = None  # openai: the model name sent upstream, if different
    # openai: send each call's priority as vLLM's `priority` field (lower first: interactive
    # 0, flex 1, batches 2-4 by their priority); for vLLM run with --scheduling-policy priority.
    # vllm: run the in-process engine with vLLM's priority scheduler and the same priorities.
    send_priority: bool = False
    max_concurrency: int = Field(default=64, ge=1, le=100_000)
    # Adaptive concurrency (backends/pacing.py): start at initial_concurrency (default
    # max_concurrency; anthropic and openai kinds without one start low and double per round
    # trip), lower on 429/529/timeouts and rising latency, grow per window of successes,
    # within [min, max].
    min_concurrency: int = Field(default=1, ge=1)
    initial_concurrency: int | None = Field(default=None, ge=1)
    adaptive_concurrency: bool = True
    # While batch work waits, interactive and flex calls take at most this share of the
    # limit ahead of it (they still go first for that share); the rest keeps batches moving.
    interactive_share: float = Field(default=0.75, gt=0, le=1)
    # An interactive call that finds batch work in every slot of the limit takes one slot
    # more instead of waiting for a batch call to end, unless a call was refused for
    # congestion (the limit may be the upstream's then) or fleet_max_concurrency is set;
    # false: the limit holds for every call (where max_concurrency is an upstream's hard cap).
    interactive_extra_slot: bool = True
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    # The calls in flight to this backend from every process together (batchd's own): on
    # PostgreSQL the processes share it through the database (backends/fleet.py); on SQLite
    # one process holds it all, so it bounds the limit as max_concurrency does. Off: unset.
    fleet_max_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    # The longest one upstream call may take (anthropic, openai), else a retryable
    # timeout_error. Unset: 600 s, or 1 s per 10 tokens of the request's max_tokens where
    # that is longer (backends/http.py::call_timeout), so a long output is not cut; set, it
    # holds for every call, however long its output.
    timeout_seconds: float | None = Field(default=None, gt=0)
    # The largest max_tokens a request may ask of this backend (a larger one is refused as
    # invalid_request_error); default: a local model's context length, else 128,000.
    max_output_tokens: int | None = Field(default=None, ge=1)
    # openai: base64 PDFs are read in child processes, within these bounds (see
    # backends/pdf.py); a PDF over one is that request's invalid_request_error.
    pdf_max_pages: int = Field(default=100, ge=1)
    pdf_max_characters: int = Field(default=1_000_000, ge=1)
    pdf_cpu_seconds: float = Field(default=10.0, gt=0)
    pdf_workers: int = Field(default=2, ge=1)  # children at once for this backend
    pdf_workers_per_key: int = Field(default=1, ge=1)  # ... for one key (or one batch)
    # Hosts whose image/document URLs this backend may be asked to fetch (patterns such as
    # "*.cdn.example"); default: any public host, never a loopback/private/link-local one.
    allowed_url_hosts: list[str] | None = None
    max_retries: int | None = Field(default=None, ge=0)
    # Answer reuse (batchd's own): a batch request whose canonical params (all but metadata,
    # with the backend it is routed to) match a request that already succeeded here in the
    # same workspace is answered from that result without an upstream call: "deterministic"
    # for requests with temperature 0 (and OpenAI embeddings) only, "always" for any; "off"
    # calls every time. Both faces; their answers are kept apart (engine/answers.py).
    reuse_answers: ReuseMode = "off"
    latency_ms: float = Field(default=0.0, ge=0)  # mock only: time each answer takes
    # transformers / vllm: a Hugging Face model directory, run in this process
    model_path: str | None = None
    max_batch_size: int = Field(default=32, ge=1)  # sequences generated at once
    device: str | None = None  # transformers: "cpu", "cuda", "cuda:1"; default: CUDA if present
    share_prefixes: bool = True  # transformers: a shared prompt prefix computed once
    # transformers: prompt tokens of shared prefixes kept (keys and values) for later rows
    prefix_cache_tokens: int = Field(default=32_768, ge=0)
    cpu_threads: int | None = Field(default=None, ge=1)  # transformers on CPU: default cores-1
    # local kinds: how the model writes tool calls ("auto": as its chat template teaches)
    tool_call_format: Literal["auto", "hermes", "llama3", "none"] = "auto"
    # transformers: "module:factory" paths; each factory(tokenizer) gives a function
    # (prompt ids, generated ids, scores) -> scores applied to every row (batchd's own)
    logits_processors: list[str] = Field(default_factory=list)
    # claim each batch's requests in prefix-key order (requests sharing a prompt prefix
    # together) rather than in the order of the batch file
    prefix_order: bool = True

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _consistent(self) -> BackendConfig:
        if self.kind in LOCAL_KINDS:
            if not self.model_path:
                raise ValueError(f"backend {self.name!r}: kind {self.kind!r} needs model_path")
        elif self.kind != "mock" and not self.base_url:
            raise ValueError(f"backend {self.name!r}: kind {self.kind!r} needs base_url")
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"backend {self.name!r}: min_concurrency > max_concurrency")
        if self.fleet_max_concurrency is not None and (
            self.min_concurrency > self.fleet_max_concurrency
        ):
            raise ValueError(f"backend {self.name!r}: min_concurrency > fleet_max_concurrency")
        if self.initial_concurrency is not None and not (
            self.min_concurrency <= self.initial_concurrency <= self.max_concurrency
        ):
            raise ValueError(
                f"backend {self.name!r}: initial_concurrency must lie in "
                "[min_concurrency, max_concurrency]"
            )
        return self

    def output_token_limit(self) -> int:
        """The largest ``max_tokens`` a request may ask of this backend."""
        if self.max_output_tokens is not None:
            return self.max_output_tokens
        if self.kind in LOCAL_KINDS and self.model_path:
            return context_length(Path(self.model_path)) or DEFAULT_MAX_OUTPUT_TOKENS
        return DEFAULT_MAX_OUTPUT_TOKENS

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class PriceConfig(BaseModel):
    """One ``[[prices]]`` table: what a model's tokens cost interactively, per million, and
    the share of that a batch saves (batchd's own; for cost estimates only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1)  # glob patterns matched against ``model``
    input: float = Field(ge=0)  # per million input tokens
    output: float = Field(ge=0)  # per million output tokens
    cache_read: float | None = Field(default=None, ge=0)  # per million; default: input's
    batch_discount: float = Field(default=0.5, ge=0, le=1)  # 0.5: a batch costs half


def context_length(model_path: Path) -> int | None:
    """The context length a Hugging Face model directory's config.json declares, if any."""
    try:
        declared = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(declared.get("text_config"), dict):  # multimodal models nest it
        declared = {**declared["text_config"], **declared}
    for key in _CONTEXT_KEYS:
        value = declared.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHD_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    db: str = "sqlite:///batchd.db"
    config: Path | None = None
    public_url: str | None = None  # origin used in results_url; else the address reached
    engine: bool = True  # run the engine inside `serve`

    batch_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    results_retention_seconds: float = Field(default=29 * 24 * 3600.0, gt=0)
    # Past retention a batch's requests (params, results) are deleted, this many per
    # transaction, looked for this often; the batch row stays (README: "Storage lifecycle").
    purge_interval_seconds: float = Field(default=60.0, gt=0)
    purge_chunk: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=256 * 1024 * 1024, gt=0)  # a create-batch body
    # A POST /v1/messages or count_tokens body (the hosted API takes 32 MB).
    max_message_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # Request bodies held at once, by the requests of one key and by all (else 429).
    max_body_bytes_per_key: int = Field(default=512 * 1024 * 1024, gt=0)
    max_body_bytes_total: int = Field(default=1024 * 1024 * 1024, gt=0)
    # A body that stops arriving for this long is answered 408 and dropped.
    body_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    # The request line and headers: at most this many bytes, complete within this many
    # seconds of the connection opening (or of a later request's first byte); else 431 / closed.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=30.0, gt=0)
    # Connections served at once (kept below the open-file limit); a request over it: 503.
    max_connections: int = Field(default=4096, ge=1)
    # A request answered before its body arrived (a 401, a 413) has the rest of the body
    # read for at most this long and this many bytes; then its connection is closed.
    # (Draining lets a client that writes its whole body before reading see the answer.)
    drain_seconds: float = Field(default=10.0, gt=0)
    drain_bytes: int = Field(default=512 * 1024 * 1024, ge=0)
    # Create-batch uploads one key may have in progress at once; the next one gets 429.
    max_concurrent_uploads_per_key: int = Field(default=4, ge=1)
    max_requests_per_batch: int = Field(default=100_000, ge=1)
    # An OpenAI batch input file (POST /v1/files): at most this many bytes and lines, as
    # OpenAI's Batch API takes (over the bytes: 413 while it arrives; over the lines: 400).
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    max_file_lines: int = Field(default=50_000, ge=1)
    # Quotas (off when unset): what one workspace may have waiting at once, checked in the
    # create's transaction (over either: 429 naming the limit, nothing stored), and the
    # interactive calls (/v1/messages, count_tokens, /v1/chat/completions, /v1/embeddings)
    # one key may have in progress at once.
    max_unfinished_batches_per_workspace: int | None = Field(default=None, ge=1)
    max_queued_requests_per_workspace: int | None = Field(default=None, ge=1)
    # ... and the input tokens of those requests (estimated on create: 4 characters a token)
    max_queued_input_tokens_per_workspace: int | None = Field(default=None, ge=1)
    max_concurrent_calls_per_key: int | None = Field(default=None, ge=1)

    # PostgreSQL: give up connecting, and waiting for one statement's answer, after this
    # long (a hung server gets 503s, not a hang); SQLite waits for its busy timeout instead.
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_statement_timeout_seconds: float = Field(default=10.0, gt=0)

    lease_seconds: float = Field(default=30.0, gt=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    sweep_interval_seconds: float = Field(default=1.0, gt=0)
    claim_chunk: int = Field(default=64, ge=1)
    # A request claimed this many times without a result (its worker died each time) ends
    # errored instead of being claimed again: one poisonous request must not crash forever.
    max_attempts: int = Field(default=10, ge=1)
    max_retries: int = Field(default=6, ge=0)
    retry_base_seconds: float = Field(default=0.5, ge=0)
    retry_max_seconds: float = Field(default=60.0, ge=0)

    # Webhooks (batchd's own): receivers on loopback, private or link-local addresses are
    # refused unless allowed here; each attempt waits at most webhook_timeout_seconds; a
    # failed delivery is tried again after retry_base, doubling up to retry_max, for
    # retry_window (24 h); an endpoint failing that long is disabled.
    webhook_allow_private_urls: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_base_seconds: float = Field(default=5.0, gt=0)
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(default=24 * 3600.0, gt=0)

    # Prices for the usage figures' cost estimates (none: no costs shown); the first table
    # whose glob matches a model prices it. ``price_currency`` only labels the figures.
    prices: list[PriceConfig] = Field(default_factory=list)
    price_currency: str = "USD"
    # Tests only (tests/faults/test_idempotency.py): SIGKILL the server after a create has
    # committed and before it answers. Off unless BATCHD_FAULT_KILL_AFTER_CREATE is set.
    fault_kill_after_create: bool = False

    backends: list[BackendConfig] = Field(default_factory=list)

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, backends: list[BackendConfig]) -> list[BackendConfig]:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique, got {names}")
        return backends

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003  (no .env files)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003  (no secret dirs)
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file(init_settings)
        if config_file is not None:
            if not Path(config_file).is_file():
                raise ValueError(f"config file not found: {config_file}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def _config_file(init_settings: PydanticBaseSettingsSource) -> Any:
    if isinstance(init_settings, InitSettingsSource) and init_settings.init_kwargs.get("config"):
        return init_settings.init_kwargs["config"]
    return os.environ.get("BATCHD_CONFIG") or None


def load_settings(**overrides: Any) -> Settings:
    """Build the Settings from flags (``None`` means: not given)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
