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

The OpenAI dialect (``call_openai``): a chat request is rendered by the same template
natively (``prompt.template_chat``: it is already in the chat shape) and answered as a
``chat.completion``; an embeddings request goes to the ``Embedder`` (``kind =
"transformers"`` only: ``local/embedding_engine.py``). A directory whose model does not
generate (an encoder, a sentence-transformers model) serves embeddings only.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from batchd.backends.base import CALL_PRIORITY, OPENAI_CHAT, OPENAI_EMBEDDINGS
from batchd.backends.embeddings import embeddings_request, embeddings_response
from batchd.backends.local.generation import Finish, Generated, Generator, Job, Sampling
from batchd.backends.local.prompt import chat_messages, chat_tools, template_chat
from batchd.backends.local.tool_calls import (
    MalformedToolCall,
    ToolCallFormat,
    ToolUse,
    format_of_template,
    parse_tool_calls,
    tool_use_of,
)
from batchd.backends.messages_translate import check_plain, completion_from_message, tool_choice
from batchd.config import BackendConfig, context_length
from batchd.errors import InvalidRequest, UpstreamError
from batchd.validation import Params

Tokenizer = Any  # a transformers tokenizer: an untyped library object


class Embedder(Protocol):
    """An embeddings engine: one ``embed`` per input (token ids), any number at once."""

    max_length: int | None  # the most tokens one input may have, when the model says

    async def start(self) -> None: ...

    async def embed(self, tokens: list[int]) -> list[float]: ...

    async def close(self) -> None: ...


MakeGenerator = Callable[[Tokenizer], Generator]
MakeEmbedder = Callable[[Tokenizer, Generator | None], Embedder]


def is_decoder(config: Mapping[str, Any]) -> bool:
    """Whether a model's ``config.json`` describes a decoder (a generating model)."""
    architectures = config.get("architectures") or ()
    return bool(config.get("is_decoder")) or any(
        str(a).endswith("ForCausalLM") for a in architectures
    )


def generates(model_path: Path) -> bool:
    """Whether the model directory holds a generating model (not a sentence-transformers
    directory, not an encoder)."""
    if (model_path / "modules.json").is_file():
        return False
    config = model_path / "config.json"
    return not config.is_file() or is_decoder(json.loads(config.read_text()))


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


def chat_sampling(body: Mapping[str, Any]) -> Sampling:
    """A chat request's sampling; chat.completions' default temperature is 1.0 too."""
    temperature, top_p, top_k = (body.get(k) for k in ("temperature", "top_p", "top_k"))
    if temperature is not None and not (_number(temperature) and 0 <= temperature <= 2):
        raise InvalidRequest(f"temperature: must be a number from 0 to 2, not {temperature!r}")
    if top_p is not None and not (_number(top_p) and 0 <= top_p <= 1):
        raise InvalidRequest(f"top_p: must be a number from 0 to 1, not {top_p!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 0):
        raise InvalidRequest(f"top_k: must be a non-negative integer, not {top_k!r}")
    return Sampling(1.0 if temperature is None else temperature, top_p, top_k or None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class LocalBackend:
    def __init__(
        self,
        config: BackendConfig,
        make_generator: MakeGenerator,
        make_embedder: MakeEmbedder | None = None,
    ) -> None:
        assert config.model_path, "checked by BackendConfig"
        self.name = config.name
        self.kind = config.kind
        self.max_concurrency = config.max_concurrency
        self.max_retries = config.max_retries
        self.model_path = config.model_path
        self.context = context_length(Path(config.model_path))  # None: not declared
        self._tool_setting = config.tool_call_format
        self._tool_format = ToolCallFormat.NONE  # set by start
        self._output_limit = config.output_token_limit()
        self._make_generator = make_generator
        self._make_embedder = make_embedder
        self._tokenizer: Tokenizer = None
        self._generator: Generator | None = None
        self._embedder: Embedder | None = None

    async def start(self) -> None:
        try:
            from transformers import AutoTokenizer

            self._tokenizer = await asyncio.to_thread(
                AutoTokenizer.from_pretrained, self.model_path
            )
            template = getattr(self._tokenizer, "chat_template", None)
            self._tool_format = (
                format_of_template(template if isinstance(template, str) else None)
                if self._tool_setting == "auto"
                else ToolCallFormat(self._tool_setting)
            )
            if self._make_embedder is None or generates(Path(self.model_path)):
                self._generator = self._make_generator(self._tokenizer)
                await self._generator.start()
            if self._make_embedder is not None:
                self._embedder = self._make_embedder(self._tokenizer, self._generator)
                await self._embedder.start()
        except ImportError as exc:
            raise RuntimeError(
                f"backend {self.name!r} (kind {self.kind!r}) needs the {_extra(self.kind)!r} "
                f"extra: pip install 'batchd[{_extra(self.kind)}]' ({exc})"
            ) from exc

    async def close(self) -> None:
        if self._generator is not None:
            await self._generator.close()
        if self._embedder is not None:
            await self._embedder.close()

    def prompt_tokens(
        self,
        system: str | list[dict[str, Any]] | None,
        messages: Sequence[tuple[str, Any]],
        tools: list[dict[str, Any]] | None,
    ) -> list[int]:
        """The token ids of the conversation as the model's chat template renders it, with
        the assistant's turn opened."""
        return self._template_tokens(chat_messages(system, messages), chat_tools(tools))

    def _template_tokens(self, chat: list[dict[str, Any]], tools: list[Any] | None) -> list[int]:
        from jinja2 import TemplateError  # here: only the local extras bring jinja2

        try:
            text = self._tokenizer.apply_chat_template(
                chat, tools=tools, add_generation_prompt=True, tokenize=False
            )
        except (TemplateError, ValueError) as exc:  # e.g. roles out of the template's order
            raise InvalidRequest(f"the model's chat template refused the messages: {exc}") from exc
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _generating(self) -> Generator:
        if self._generator is None:
            raise InvalidRequest(
                f"model: backend {self.name!r} computes embeddings only; it does not generate"
            )
        return self._generator

    async def _generate(
        self, prompt: list[int], max_tokens: int, stops: tuple[str, ...], sampling: Sampling
    ) -> Generated:
        if max_tokens == 0:
            return Generated([], Finish.LENGTH)
        job = Job(prompt, max_tokens, stops, sampling, priority=CALL_PRIORITY.get())
        return await self._generating().generate(job)

    async def create_message(self, params: Params, raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        self._generating()
        turns = [(m.role, m.content) for m in params.messages]
        prompt = self.prompt_tokens(params.system, turns, params.tools)
        self.check_context(len(prompt), params.max_tokens)
        stops = tuple(s for s in params.stop_sequences or () if s)
        names = [str(tool.get("name")) for tool in params.tools or ()]
        tools = tool_use_of(names, params.tool_choice)
        generated = await self._generate(prompt, params.max_tokens, stops, sampling_of(params))
        return self._message(params.model, prompt, generated, stops, tools)

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

    async def call_openai(self, endpoint: str, body: dict[str, Any], raw: bytes) -> dict[str, Any]:  # noqa: ARG002
        if endpoint == OPENAI_CHAT:
            return await self._chat_completion(body)
        if endpoint == OPENAI_EMBEDDINGS:
            return await self._embeddings(body)
        raise InvalidRequest(f"{endpoint} is not served by local backends")

    async def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidRequest("model: Field required (a string)")
        self._generating()
        check_plain(body, "a local model")
        chat, tools = template_chat(body)
        prompt = self._template_tokens(chat, tools)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = self._output_limit if max_tokens is None else max_tokens
        stop = body.get("stop") or ()
        stops = tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)
        names = [str(tool.get("function", {}).get("name")) for tool in tools or ()]
        tool_use = tool_use_of(names, tool_choice(body))
        generated = await self._generate(prompt, max_tokens, stops, chat_sampling(body))
        message = self._message(model, prompt, generated, stops, tool_use)
        return completion_from_message(message, model=model, created=int(time.time()))

    async def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        request = embeddings_request(body)
        if self._embedder is None:
            raise InvalidRequest(f"model: backend {self.name!r} does not compute embeddings")
        texts = [item for item in request.inputs if isinstance(item, str)]
        encoded = iter(self._tokenizer(texts)["input_ids"] if texts else ())  # one call
        inputs = [item if isinstance(item, list) else next(encoded) for item in request.inputs]
        vocabulary, longest = len(self._tokenizer), self._embedder.max_length
        for i, tokens in enumerate(inputs):
            if longest is not None and len(tokens) > longest:
                raise InvalidRequest(
                    f"input.{i}: {len(tokens)} tokens, more than the model takes ({longest})"
                )
            if max(tokens) >= vocabulary:
                raise InvalidRequest(f"input.{i}: token ids must be below {vocabulary}")
        vectors = await asyncio.gather(*(self._embedder.embed(t) for t in inputs))
        return embeddings_response(request, vectors, prompt_tokens=sum(map(len, inputs)))

    def _message(
        self,
        model: str,
        prompt: list[int],
        generated: Generated,
        stops: Sequence[str],
        tools: ToolUse,
    ) -> dict[str, Any]:
        """The Message of a generation; with ``tools.names`` (those the request lets the
        model call), the model's tool calls as ``tool_use`` blocks."""
        # the end-of-turn token is counted but not shown (it need not be a special token)
        shown = generated.tokens[:-1] if generated.finish is Finish.EOS else generated.tokens
        decoded = self._tokenizer.decode(shown, skip_special_tokens=True)
        text, stop_reason, stop_sequence = stop_outcome(decoded, generated.finish, stops)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if tools.names is not None and stop_reason != "stop_sequence":
            content, stop_reason = self._tool_uses(tools.names, text, stop_reason)
        if tools.required and stop_reason not in ("tool_use", "max_tokens"):
            raise _unreadable("tool_choice requires a tool call and the model wrote none")
        cached = generated.cache_read + generated.cache_write
        return {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
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
        self, names: Collection[str], text: str, stop_reason: str
    ) -> tuple[list[dict[str, Any]], str]:
        """The turn's content with its tool calls as ``tool_use`` blocks. A call cut off by
        ``max_tokens`` stays text; any other unreadable call fails the request."""
        try:
            turn = parse_tool_calls(text, self._tool_format, names)
        except MalformedToolCall as exc:
            if stop_reason == "max_tokens":
                return [{"type": "text", "text": text}], stop_reason
            raise _unreadable(f"the model wrote a tool call that cannot be read: {exc}") from exc
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


def _unreadable(message: str) -> UpstreamError:
    """The request's ``api_error``: the model's turn does not answer it as asked."""
    return UpstreamError(message, upstream_status=502, error_type="api_error", retryable=False)


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

    def make_embedder(tokenizer: Tokenizer, generator: Generator | None) -> Embedder:
        from batchd.backends.local.embedding_engine import TransformersEmbedder

        assert config.model_path
        pad = tokenizer.pad_token_id  # any id will do: the mask hides it
        if pad is None:
            pad = tokenizer.eos_token_id or 0
        return TransformersEmbedder(
            config.model_path,
            pad=pad,
            device=config.device,
            max_batch=config.max_batch_size,
            threads=config.cpu_threads,
            shared=getattr(generator, "model", None),
        )

    return LocalBackend(config, make, make_embedder)


def vllm_backend(config: BackendConfig) -> LocalBackend:
    def make(tokenizer: Tokenizer) -> Generator:
        from batchd.backends.local.vllm_engine import VllmGenerator

        assert config.model_path
        return VllmGenerator(
            config.model_path,
            tokenizer,
            max_num_seqs=config.max_batch_size,
            priority_scheduling=config.send_priority,
        )

    return LocalBackend(config, make)
