"""The in-process embeddings engine (kind = "transformers") against the library on its own:
part of the ``local`` scenario (``bench/local.py``), in the same ``batchd serve``.

On the tiny sentence-transformers encoder that the tests build
(``tests/support/tiny_model.py``: a two-layer BERT, mean pooling), the same short texts
everywhere, inputs embedded per second by:

* batchd: ``batchd serve`` (its own process) answering ``POST /v1/embeddings``, requests of
  ``per_request`` inputs, ``clients`` of them at once, from the first request sent to the
  last answer read;
* ``padded``: the library's own batched forward pass in this process: the fast tokenizer
  over a group of ``batch_size`` texts, one right-padded forward pass, mean pooling over the
  mask, vectors scaled to unit length; the better of torch on all cores and on one (the
  target: batchd at >= 60% of it).
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.tiny_model import build_tiny_embedding_model

from bench import harness

MODEL = "tiny-embed"
_WORDS = ["the", "model", "batch", "token", "prompt", "engine", "request", "cache", "system"]

Row = dict[str, Any]


def texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def _batchd_inputs_per_s(url: str, inputs: list[str], per_request: int, clients: int) -> float:
    groups = [inputs[at : at + per_request] for at in range(0, len(inputs), per_request)]

    def embed(group: list[str]) -> int:
        body = json.dumps({"model": MODEL, "input": group, "encoding_format": "base64"})
        answer = harness.post_json(f"{url}/v1/embeddings", body.encode())
        return len(answer["data"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        embedded = sum(pool.map(embed, groups))
    took = time.perf_counter() - started
    assert embedded == len(inputs), embedded
    return embedded / took


class Library:
    """The library on its own: the baseline."""

    def __init__(self, model: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model)
        auto: Any = AutoModel  # an untyped factory
        self.model: Any = auto.from_pretrained(model).eval()

    def padded(self, inputs: list[str], batch_size: int, threads: int) -> float:
        self.torch.set_num_threads(threads)
        started = time.perf_counter()
        for at in range(0, len(inputs), batch_size):
            encoded = self.tokenizer(
                inputs[at : at + batch_size], padding=True, return_tensors="pt"
            )
            with self.torch.inference_mode():
                hidden = self.model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
                vectors = self.torch.nn.functional.normalize(pooled, dim=-1)
            vectors.tolist()
        return len(inputs) / (time.perf_counter() - started)


def backend(model: Path, batch_size: int) -> dict[str, Any]:
    return {
        "name": "embed",
        "kind": "transformers",
        "model_path": str(model),
        "models": [MODEL],
        "max_batch_size": batch_size,
        "max_concurrency": 4 * batch_size,
    }


class Measure:
    """The workload, and batchd's figures as ``local`` takes them in each of its runs."""

    def __init__(self, size: dict[str, Any], workdir: Path) -> None:
        self.model = build_tiny_embedding_model(workdir / "tiny-embedding-model")
        self.inputs = texts(size["embed_inputs"])
        self.batch_size = size["batch_size"]
        self.per_request, self.clients = size["embed_per_request"], size["embed_clients"]
        self.runs: list[float] = []

    def run(self, url: str) -> None:
        """One figure from a running batchd (warmed with a few requests first)."""
        warm = self.inputs[: 4 * self.per_request]
        _batchd_inputs_per_s(url, warm, self.per_request, self.clients)
        self.runs.append(_batchd_inputs_per_s(url, self.inputs, self.per_request, self.clients))

    def row(self, repeat: int) -> Row:
        batchd = sorted(self.runs)[len(self.runs) // 2]
        library = Library(self.model)
        library.padded(self.inputs[: 4 * self.batch_size], self.batch_size, 1)  # warm
        padded = max(
            harness.median_of(
                repeat,
                functools.partial(library.padded, self.inputs, self.batch_size, threads),
                key=float,
            )
            for threads in sorted({1, os.cpu_count() or 1})
        )
        return {
            "embed_inputs": len(self.inputs),
            "per_request": self.per_request,
            "clients": self.clients,
            "batchd_inputs_s": round(batchd),
            "padded_inputs_s": round(padded),
            "of_padded": round(batchd / padded, 2),
        }
