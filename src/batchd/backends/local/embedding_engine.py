"""The in-process embeddings engine of ``kind = "transformers"``: padded batches of forward
passes, each row's hidden states pooled into one vector.

Which pooling (``pooling_of``), in this order:

* a sentence-transformers directory (``modules.json``): its ``Pooling`` module's
  ``config.json`` (``1_Pooling/config.json``) names the mode: ``cls``, ``mean``, ``max`` or
  ``lasttoken``; a directory that names another mode (or several at once) is refused
  when the backend starts;
* otherwise the model's ``config.json``: a decoder (``is_decoder``, or an architecture
  ``…ForCausalLM``) pools its last token, an encoder takes the mean over its tokens.

Every vector is then scaled to unit length (as OpenAI's are; ``backends/embeddings.py``).

Inputs wait in the same ``PaddedBatcher`` as generation's jobs (``local/batching.py``):
whenever the engine is free, the oldest waiting input and those nearest it in length go
through the model as one right-padded batch (the attention mask hides the padding; the
last token of a row is found from the mask). A decoder model shares the weights that the
generator loaded: nothing is loaded twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from batchd.backends.local.backend import is_decoder
from batchd.backends.local.batching import PaddedBatcher
from batchd.backends.local.generation import Job
from batchd.backends.local.transformers_engine import load_model, pick_device


class Pooling(StrEnum):
    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    LAST = "last"


# sentence-transformers' Pooling config keys, for the modes batchd computes
_SENTENCE_TRANSFORMERS_MODES = {
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_max_tokens": Pooling.MAX,
    "pooling_mode_lasttoken": Pooling.LAST,
}


def pooling_of(model_path: Path) -> Pooling:
    """The pooling a model directory asks for (see the module's docstring)."""
    modules = model_path / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text()):
            if str(module.get("type", "")).endswith(".Pooling"):
                config = json.loads((model_path / module["path"] / "config.json").read_text())
                return sentence_transformers_pooling(config)
    config = json.loads((model_path / "config.json").read_text())
    return Pooling.LAST if is_decoder(config) else Pooling.MEAN


def sentence_transformers_pooling(config: Mapping[str, Any]) -> Pooling:
    named = [key for key, value in config.items() if key.startswith("pooling_mode") and value]
    if len(named) != 1 or named[0] not in _SENTENCE_TRANSFORMERS_MODES:
        raise ValueError(
            f"sentence-transformers pooling {named} is not one batchd computes "
            f"(one of {sorted(_SENTENCE_TRANSFORMERS_MODES)})"
        )
    return _SENTENCE_TRANSFORMERS_MODES[named[0]]


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One vector per row of ``hidden`` (rows x tokens x width), right-padded as ``mask``."""
    if pooling is Pooling.CLS:
        return hidden[:, 0]
    if pooling is Pooling.LAST:
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    kept = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling is Pooling.MAX:
        return hidden.masked_fill(kept == 0, float("-inf")).max(dim=1).values
    return (hidden * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)


class PaddedEmbed:
    """One right-padded forward pass over a group of inputs (called in a worker thread)."""

    def __init__(self, model: Any, pooling: Pooling, pad: int, device: str) -> None:
        self._model = model
        self._pooling = pooling
        self._pad = pad
        self._device = device

    def __call__(self, jobs: Sequence[Job]) -> list[list[float]]:
        width = max(len(job.prompt) for job in jobs)
        ids = [job.prompt + [self._pad] * (width - len(job.prompt)) for job in jobs]
        mask = [[1] * len(job.prompt) + [0] * (width - len(job.prompt)) for job in jobs]
        with torch.inference_mode():
            tensor_mask = torch.tensor(mask, device=self._device)
            output = self._model(
                input_ids=torch.tensor(ids, device=self._device), attention_mask=tensor_mask
            )
            pooled = pool(output.last_hidden_state, tensor_mask, self._pooling)
        vectors: list[list[float]] = pooled.float().cpu().tolist()
        return vectors


class TransformersEmbedder:
    """The embeddings engine: the model (or a generator's, shared), and its batcher."""

    def __init__(
        self,
        model_path: str,
        *,
        pad: int,
        device: str | None,
        max_batch: int,
        threads: int | None = None,
        shared: Any = None,
    ) -> None:
        self._model_path = Path(model_path)
        self._pad = pad
        self._device = pick_device(device)
        self._max_batch = max_batch
        self._threads = threads
        self._shared = shared  # a loaded causal LM whose base model embeds
        self._batcher: PaddedBatcher[list[float]] | None = None
        self.max_length: int | None = None

    async def start(self) -> None:
        pooling = pooling_of(self._model_path)
        model = await asyncio.to_thread(self._load)
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        run_batch = PaddedEmbed(model, pooling, self._pad, self._device)
        self._batcher = PaddedBatcher(run_batch, self._max_batch)
        self._batcher.start()

    def _load(self) -> Any:
        if self._shared is not None:
            return self._shared.base_model
        return load_model(AutoModel, str(self._model_path), self._device, self._threads)

    async def embed(self, tokens: list[int]) -> list[float]:
        assert self._batcher is not None, "start() first"
        return await self._batcher.generate(Job(tokens, 0))

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
