"""The backend of the local kinds: everything but the engine call.

It renders the Messages params with the model's own chat template, tokenizes them with
the model's tokenizer (so ``input_tokens`` and ``count_tokens`` are the real counts), hands
a ``Job`` to the engine, then decodes the generated tokens, cuts the text at the first stop
sequence, reads the model's tool calls (``tool_calls.py``) and builds the Message.
``kind = "transformers"`` and ``kind = "vllm"`` differ only in the ``Generator`` made by
``start``; each imports its library only when built.

A prompt whose tokens and ``max_tokens`` together pass the model's context (its
config.json's ``max_position_embeddings`` or alike) is refused before anything runs, and
``count_tokens`` refuses a prompt that alone passes it. Usage follows the hosted API's
prompt caching: ``input_tokens`` are the prompt tokens the model computed for this
request, ``cache_read_input_tokens`` those it took from the engine's prefix cache and
``cache_creation_input_tokens`` those it computed into it; the three add up to the
prompt, which is what ``count_tokens`` answers.
"""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batchd.backends.local.generation import Finish, Generated, Generator, Job, Sampling
from batchd.backends.local.prompt import chat_messages, chat_tools
from batchd.backends.local.tool_calls import (
    MalformedToolCall,
    ToolCallFormat,
    format_of_template,
    parse_tool_calls,
)
from batchd.config import BackendConfig, context_length
from batchd.errors import InvalidRequest, UpstreamError
from batchd.validation import Params

Tokenizer = Any  # a transformers tokenizer: an untyped library object
MakeGenerator = Callable[[Tokenizer], Generator]


def _extra(kind: str) -> str:
    return "vllm" if kind == "vllm" else "local"


def stop_outcome(text: str, finish: Finish, stops: Sequence[str]) -> tuple[str, str, str | None]:
    """(text, stop_reason, stop_sequence) of a generation: the text is cut before the first
    stop sequence in it."""
    if finish is Finish.STOP:
        found = [(text.find(s), i, s) for i, s in enumerate(stops) if s and s in text]
        if found:
            at, _, sequence = min(found)
            return text[:at], "stop_sequence", sequence
    if finish is Finish.LENGTH:
        return text, "max_tokens", None
    return text, "end_turn", None


def sampling_of(params: Params) -> Sampling:
    """The request's sampling; the Messages API's default temperature is 1.0."""
    temperature = 1.0 if params.temperature is None else params.temperature
    return Sampling(temperature, params.top_p, params.top_k or None)


class LocalBackend:
    def __init__(self, config: BackendConfig, make_generator: MakeGenerator) -> None:
        assert config.model_path, "checked by BackendConfig"
        self.name = config.name
        self.kind = config.kind
        self.max_concurrency = config.max_concurrency
        self.max_retries = config.max_retries
        self.model_path = config.model_path
        self.context = context_length(Path(config.model_path))  # None: not declared
        self._tool_setting = config.tool_call_format
        self._tool_format = ToolCallFormat.NONE  # set by start
        self._make_generator = make_generator
        self._tokenizer: Tokenizer = None
        self._generator: Generator | None = None

    async def start(self) -> None:
        try:
            from transformers import AutoTokenizer

            self._tokenizer = await asyncio.to_thread(
                AutoTokenizer.from_pretrained, self.model_path
            )
            self._generator = self._make_generator(self._tokenizer)
            template = getattr(self._tokenizer, "chat_template", None)
            self._tool_format = (
                format_of_template(template if isinstance(template, str) else None)
                if self._tool_setting == "auto"
                else ToolCallFormat(self._tool_setting)
            )
        except ImportError as exc:
            raise RuntimeError(
                f"backend {self.name!r} (kind {self.kind!r}) needs the {_extra(self.kind)!r} "
                f"extra: pip install 'batchd[{_extra(self.kind)}]' ({exc})"
            ) from exc
        await self._generator.start()

    async def close(self) -> None:
        if self._generator is not None:
            await self._generator.close()

    def prompt_tokens(
        self,
        system: str | list[dict[str, Any]] | None,
        messages: Sequence[tuple[str, Any]],
        tools: list[dict[str, Any]] | None,
    ) -> list[int]:
        """The token ids of the conversation as the model's chat template renders it, with
        the assistant's turn opened."""
        from jinja2 import TemplateError  # here: only the local extras bring jinja2

        chat = chat_messages(system, messages)
        try:
            text = self._tokenizer.apply_chat_template(
                chat, tools=chat_tools(tools), add_generation_prompt=True, tokenize=False
            )
        except (TemplateError, ValueError) as exc:  # e.g. roles out of the template's order
            raise InvalidRequest(f"the model's chat template refused the messages: {exc}") from exc
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        assert self._generator is not None, "start() first"
        turns = [(m.role, m.content) for m in params.messages]
        prompt = self.prompt_tokens(params.system, turns, params.tools)
        self.check_context(len(prompt), params.max_tokens)
        stops = tuple(s for s in params.stop_sequences or () if s)
        if params.max_tokens == 0:
            generated = Generated([], Finish.LENGTH)
        else:
            job = Job(prompt, params.max_tokens, stops, sampling_of(params))
            generated = await self._generator.generate(job)
        return self._message(params, prompt, generated, stops)

    def check_context(self, prompt: int, max_tokens: int = 0) -> None:
        """InvalidRequest, naming both figures, when the prompt and ``max_tokens`` do not fit
        in the model's context."""
        if self.context is None or prompt + max_tokens <= self.context:
            return
        if max_tokens:
            raise InvalidRequest(
                f"prompt is too long for max_tokens: {prompt} prompt tokens + {max_tokens} "
                f"max_tokens = {prompt + max_tokens} > {self.context}, the model's context"
            )
        raise InvalidRequest(
            f"prompt is too long: {prompt} tokens > {self.context}, the model's context"
        )

    def _message(
        self, params: Params, prompt: list[int], generated: Generated, stops: Sequence[str]
    ) -> dict[str, Any]:
        # the end-of-turn token is counted but not shown (it need not be a special token)
        shown = generated.tokens[:-1] if generated.finish is Finish.EOS else generated.tokens
        decoded = self._tokenizer.decode(shown, skip_special_tokens=True)
        text, stop_reason, stop_sequence = stop_outcome(decoded, generated.finish, stops)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if params.tools and stop_reason != "stop_sequence":
            content, stop_reason = self._tool_uses(params, text, stop_reason)
        cached = generated.cache_read + generated.cache_write
        return {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": params.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": len(prompt) - cached,
                "output_tokens": len(generated.tokens),
                "cache_creation_input_tokens": generated.cache_write,
                "cache_read_input_tokens": generated.cache_read,
            },
        }

    def _tool_uses(
        self, params: Params, text: str, stop_reason: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The turn's content with its tool calls as ``tool_use`` blocks. A call cut off by
        ``max_tokens`` stays text; any other unreadable call fails the request."""
        names = {str(tool.get("name")) for tool in params.tools or ()}
        try:
            turn = parse_tool_calls(text, self._tool_format, names)
        except MalformedToolCall as exc:
            if stop_reason == "max_tokens":
                return [{"type": "text", "text": text}], stop_reason
            raise UpstreamError(
                f"the model wrote a tool call that cannot be read: {exc}",
                upstream_status=502,
                error_type="api_error",
                retryable=False,
            ) from exc
        if not turn.calls:
            return [{"type": "text", "text": text}], stop_reason
        content: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
        content += [
            {
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": c.name,
                "input": c.arguments,
            }
            for c in turn.calls
        ]
        return content, "tool_use"

    async def count_tokens(self, request: dict[str, Any], raw: bytes) -> int:  # noqa: ARG002
        """The real count: the prompt as ``create_message`` would send it to the model."""
        turns = [(m["role"], m["content"]) for m in request["messages"]]
        count = len(self.prompt_tokens(request.get("system"), turns, request.get("tools")))
        self.check_context(count)
        return count


def _imported(path: str) -> Any:
    """The object a "module:name" path names (a logits processor factory)."""
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"logits processor {path!r} cannot be imported: {exc}") from exc


def transformers_backend(config: BackendConfig) -> LocalBackend:
    def make(tokenizer: Tokenizer) -> Generator:
        from batchd.backends.local.transformers_engine import TransformersGenerator

        assert config.model_path
        return TransformersGenerator(
            config.model_path,
            tokenizer,
            device=config.device,
            max_batch=config.max_batch_size,
            share_prefixes=config.share_prefixes,
            prefix_cache_tokens=config.prefix_cache_tokens,
            threads=config.cpu_threads,
            logits_processors=[_imported(path)(tokenizer) for path in config.logits_processors],
        )

    return LocalBackend(config, make)


def vllm_backend(config: BackendConfig) -> LocalBackend:
    def make(tokenizer: Tokenizer) -> Generator:
        from batchd.backends.local.vllm_engine import VllmGenerator

        assert config.model_path
        return VllmGenerator(config.model_path, tokenizer, max_num_seqs=config.max_batch_size)

    return LocalBackend(config, make)
