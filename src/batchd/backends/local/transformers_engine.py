"""The ``transformers`` engine: padded dynamic batches through ``model.generate``.

Why padded batches: on 2 CPU cores with a tiny Llama, one ``generate`` over a left-padded
batch of 64 prompts ran ~48,000 tokens/s, one prompt at a time ~1,600, and the library's
continuous batching (``generate_batch``) ~300 (``../shared/RECIPES.md``); ``python -m bench
--only local`` measures batchd beside the first two (``bench/local.py``). Each row stops on
its own: a stopping criterion ends a row at its ``max_tokens``, at the end-of-turn token,
once one of its stop sequences shows in its text or once its caller is gone (cancelled),
and the batch ends when every row has.

Prefix sharing (``share_prefixes``, on by default): when every prompt of a group starts
with the same long run of tokens (a shared system prompt), that prefix goes through the
model once and its key/value cache is repeated for each row; the rows' own tokens follow
it, padded in the middle (the attention mask hides the padding and positions follow the
mask, so the answers are those of the unpadded prompts).

torch and transformers are imported only when this engine is built (``batchd[local]``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, StoppingCriteria

from batchd.backends.local.batching import PaddedBatcher, shared_prefix
from batchd.backends.local.generation import Finish, Generated, Job

log = logging.getLogger(__name__)

_Tokenizer = Any  # a transformers tokenizer: untyped library object


def cpu_threads(configured: int | None, cores: int | None) -> int:
    """torch's threads on the CPU: as configured, else all cores but one, which stays free
    for the server's own work (HTTP, the store, the scheduler). Measured on 2 cores: with
    torch on both, a long-prompt batch ran at 120-1,800 tokens/s from run to run, as the
    event loop preempted its threads; with one, at a steady 2,500-2,900."""
    if configured:
        return configured
    return max(1, (cores or 1) - 1)


def pick_device(device: str | None) -> str:
    """The configured device, else CUDA when present, else the CPU."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(auto: Any, model_path: str, device: str, threads: int | None) -> Any:
    """``auto.from_pretrained`` (an untyped factory) on ``device``, for inference: float32
    on the CPU with ``cpu_threads`` threads, the checkpoint's own dtype elsewhere."""
    if device == "cpu":
        torch.set_num_threads(cpu_threads(threads, os.cpu_count()))
    dtype = "auto" if device != "cpu" else torch.float32
    model = auto.from_pretrained(model_path, dtype=dtype)
    return model.to(device).eval()


class _RowStops(StoppingCriteria):
    """Ends each row on its own, and remembers how long it was and why it ended."""

    def __init__(self, jobs: Sequence[Job], width: int, eos: set[int], tokenizer: _Tokenizer):
        self._jobs = jobs
        self._width = width
        self._eos = eos
        self._tokenizer = tokenizer
        self.length = [0] * len(jobs)
        self.finish: list[Finish | None] = [None] * len(jobs)
        # enough trailing tokens to hold the longest stop sequence (a token is >= 1 byte)
        self._tail = [4 * max((len(s) for s in job.stop), default=0) + 4 for job in jobs]

    def __call__(self, input_ids: torch.Tensor, _scores: torch.Tensor, **_: Any) -> torch.Tensor:
        produced = input_ids.shape[1] - self._width
        last = input_ids[:, -1].tolist()
        done = torch.zeros(len(self._jobs), dtype=torch.bool, device=input_ids.device)
        for row, job in enumerate(self._jobs):
            if self.finish[row] is None:
                self.finish[row] = self._check(input_ids, row, job, produced, last[row])
                self.length[row] = produced
            done[row] = self.finish[row] is not None
        return done

    def _check(
        self, input_ids: torch.Tensor, row: int, job: Job, produced: int, last: int
    ) -> Finish | None:
        if job.abandoned.is_set():  # cancelled: the answer is thrown away, stop computing it
            return Finish.LENGTH
        if last in self._eos:
            return Finish.EOS
        if job.stop:
            start = max(self._width, input_ids.shape[1] - self._tail[row])
            tail = self._tokenizer.decode(input_ids[row, start:].tolist(), skip_special_tokens=True)
            if any(s in tail for s in job.stop):
                return Finish.STOP
        if produced >= job.max_tokens:
            return Finish.LENGTH
        return None


class PaddedGenerate:
    """One left-padded ``generate`` call over a group of jobs (called in a worker thread)."""

    def __init__(self, model: Any, tokenizer: _Tokenizer, device: str, *, share: bool) -> None:
        self._model = model
        self._share = share
        self._tokenizer = tokenizer
        self._device = device
        self._pad = tokenizer.pad_token_id
        if self._pad is None:
            self._pad = tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = set(eos) if isinstance(eos, list) else {eos}

    def __call__(self, jobs: Sequence[Job]) -> list[Generated]:
        shared = shared_prefix([job.prompt for job in jobs]) if self._share else 0
        prefix, own = jobs[0].prompt[:shared], [job.prompt[shared:] for job in jobs]
        longest = max(len(tokens) for tokens in own)
        width = shared + longest
        ids = [prefix + [self._pad] * (longest - len(t)) + t for t in own]
        mask = [[1] * shared + [0] * (longest - len(t)) + [1] * len(t) for t in own]
        log.debug("generating %d rows, %d prefix tokens shared", len(jobs), shared)
        stops = _RowStops(jobs, width, self._eos, self._tokenizer)
        sampling = jobs[0].sampling
        options: dict[str, Any] = {"temperature": None, "top_p": None, "top_k": None}
        if not sampling.greedy:  # (None, not the model's defaults, for what is not asked)
            options = {"temperature": sampling.temperature, "top_p": sampling.top_p}
            options["top_k"] = sampling.top_k
        with torch.inference_mode():
            if shared:
                options["cache"] = self._prefix_cache(prefix, len(jobs))
            output = self._model.generate(
                input_ids=torch.tensor(ids, device=self._device),
                attention_mask=torch.tensor(mask, device=self._device),
                stopping_criteria=[stops],
                max_new_tokens=max(job.max_tokens for job in jobs),
                pad_token_id=self._pad,
                eos_token_id=sorted(self._eos),
                do_sample=not sampling.greedy,
                **options,
            )
        results = []
        for row, job in enumerate(jobs):
            length = stops.length[row] or (output.shape[1] - width)
            finish = stops.finish[row] or Finish.LENGTH
            tokens = output[row, width : width + length].tolist()
            results.append(Generated(tokens[: job.max_tokens], finish))
        return results

    def _prefix_cache(self, prefix: list[int], rows: int) -> Any:
        """The key/value cache of ``prefix``, computed once and repeated for ``rows`` rows."""
        out = self._model(input_ids=torch.tensor([prefix], device=self._device), use_cache=True)
        cache = out.cache
        cache.batch_repeat_interleave(rows)
        return cache


class TransformersGenerator:
    """The engine of ``kind = "transformers"``: the model, and the batcher feeding it."""

    def __init__(
        self,
        model_path: str,
        tokenizer: _Tokenizer,
        *,
        device: str | None,
        max_batch: int,
        share_prefixes: bool = True,
        threads: int | None = None,
    ) -> None:
        self._share = share_prefixes
        self._threads = threads
        self._model_path = model_path
        self._tokenizer = tokenizer
        self._device = pick_device(device)
        self._max_batch = max_batch
        self._batcher: PaddedBatcher[Generated] | None = None
        self.model: Any = None  # once started; the embeddings engine shares it

    async def start(self) -> None:
        self.model = model = await asyncio.to_thread(self._load)
        run_batch = PaddedGenerate(model, self._tokenizer, self._device, share=self._share)
        self._batcher = PaddedBatcher(run_batch, self._max_batch, by_prefix=self._share)
        self._batcher.start()

    def _load(self) -> Any:
        return load_model(AutoModelForCausalLM, self._model_path, self._device, self._threads)

    async def generate(self, job: Job) -> Generated:
        assert self._batcher is not None, "start() first"
        return await self._batcher.generate(job)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
