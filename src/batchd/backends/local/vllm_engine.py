"""The ``vllm`` engine: vLLM's own scheduler (continuous batching, prefix caching).

vLLM batches whatever is in flight by itself, so this engine only hands each job over and
awaits its final output. The backend keeps about twice ``max_num_seqs`` requests in flight
(``max_concurrency``, see the README), as vLLM's own ``run-batch`` does, so the engine's
waiting queue never runs dry. The claims feed it in prefix-key order (``batchd/prefix.py``),
so that the requests sharing a prefix arrive together and vLLM's prefix cache (on) holds
that prefix while they run; the prompt tokens it found cached come back as
``cache_read``. With ``priority_scheduling``, each job's ``priority`` goes to vLLM's
priority scheduler (lower first), for lanes to use. vllm is imported only when this engine
is built (``batchd[vllm]``, GPU machines).
"""

from __future__ import annotations

import uuid
from typing import Any

from batchd.backends.local.generation import Finish, Generated, Job

_Tokenizer = Any


def finish_of(reason: str | None, stop_reason: int | str | None) -> Finish:
    """vLLM's (finish_reason, stop_reason) as a Finish: a matched stop string is a str."""
    if reason == "length":
        return Finish.LENGTH
    if reason == "stop" and isinstance(stop_reason, str):
        return Finish.STOP
    return Finish.EOS


def sampling_params(job: Job) -> dict[str, Any]:
    """The keyword arguments of ``vllm.SamplingParams`` for a job."""
    params: dict[str, Any] = {
        "max_tokens": job.max_tokens,
        "temperature": job.sampling.temperature,
        "stop": list(job.stop),
        "include_stop_str_in_output": True,  # the shared backend cuts the text itself
    }
    if job.sampling.top_p is not None:
        params["top_p"] = job.sampling.top_p
    if job.sampling.top_k:
        params["top_k"] = job.sampling.top_k
    return params


def engine_args(model_path: str, max_num_seqs: int, priority: bool) -> dict[str, Any]:
    """The keyword arguments of ``vllm.engine.arg_utils.AsyncEngineArgs``."""
    args: dict[str, Any] = {
        "model": model_path,
        "max_num_seqs": max_num_seqs,
        "enable_prefix_caching": True,
    }
    if priority:
        args["scheduling_policy"] = "priority"
    return args


def cached_tokens(output: Any, prompt: int) -> int:
    """The prompt tokens vLLM took from its prefix cache (``num_cached_tokens``), at most
    all but one (vLLM computes a fully cached prompt's last token again)."""
    cached = getattr(output, "num_cached_tokens", None)
    return min(cached, prompt - 1) if isinstance(cached, int) and cached > 0 else 0


class VllmGenerator:
    def __init__(
        self,
        model_path: str,
        tokenizer: _Tokenizer,
        *,
        max_num_seqs: int,
        priority_scheduling: bool = False,
    ) -> None:
        self._model_path = model_path
        self._tokenizer = tokenizer
        self._max_num_seqs = max_num_seqs
        self.priority_scheduling = priority_scheduling
        self._engine: Any = None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(
            **engine_args(self._model_path, self._max_num_seqs, self.priority_scheduling)
        )
        self._engine = AsyncLLM.from_engine_args(args)

    async def generate(self, job: Job) -> Generated:
        from vllm import SamplingParams, TokensPrompt

        final = None
        extra = {"priority": job.priority} if self.priority_scheduling else {}
        async for output in self._engine.generate(
            TokensPrompt(prompt_token_ids=job.prompt),
            SamplingParams(**sampling_params(job)),
            request_id=uuid.uuid4().hex,
            **extra,
        ):
            final = output
        assert final is not None, "vLLM ended a request without an output"
        completion = final.outputs[0]
        return Generated(
            list(completion.token_ids),
            finish_of(completion.finish_reason, completion.stop_reason),
            cache_read=cached_tokens(final, len(job.prompt)),
        )

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
