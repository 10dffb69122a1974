"""The local engine (kind = "transformers") against the library on its own, in one run.

On the tiny Llama that the tests build (``tests/support/tiny_model.py``), greedy, the same
prompts everywhere, output tokens per second of:

* batchd: a batch through ``batchd serve`` (its own process), from create to ended;
* ``padded``: the library's ``generate`` over left-padded groups of ``max_batch_size``
  prompts, in this process, the better of torch on all cores and on one (the target:
  batchd at >= 50% of it);
* ``single``: ``generate`` one prompt at a time (what a plain script would do), the better
  of the same two thread counts.

The library's continuous batching (``generate_batch``) is not measured here: on this CPU
each call spends 9-17 s setting its paged cache up, 8 prompts x 32 tokens took 11-20 s in a
script of their own, and inside this benchmark's process it did not finish in 3 minutes.

Two workloads, one row each: short prompts, and prompts sharing one of four long system
prompts; batchd runs each with its prefix sharing (``share_prefixes``) on and off (two
backends on the same model in one ``batchd serve``). A third row is the in-process
embeddings engine against the library's batched forward pass (``bench/embeddings.py``), on
a third backend of the same ``batchd serve``.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.tiny_model import build_tiny_model

from bench import embeddings, harness

MODEL = "tiny"
_WORDS = ["the", "model", "batch", "token", "prompt", "engine", "request", "cache", "system"]

Row = dict[str, Any]


def workload(n: int, max_tokens: int, system_words: int, seed: int = 1) -> list[dict[str, Any]]:
    """Messages params; with ``system_words``, each shares one of four long system prompts."""
    rng = random.Random(seed)
    systems = [
        f"System {k}: " + " ".join(rng.choice(_WORDS) for _ in range(system_words))
        for k in range(4)
    ]
    bodies = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30)))
        body: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": max_tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": f"{i}: {words}"}],
        }
        if system_words:
            body["system"] = systems[i % 4]
        bodies.append(body)
    return bodies


def _backends(model: Path, batch_size: int) -> list[dict[str, Any]]:
    """Two backends on the same model: prefix sharing on (``tiny``) and off (``tiny-unshared``)."""
    common = {
        "kind": "transformers",
        "model_path": str(model),
        "max_batch_size": batch_size,
        "max_concurrency": 2 * batch_size,
    }
    return [
        {"name": "local", "models": [MODEL], **common},
        {"name": "unshared", "models": [f"{MODEL}-unshared"], "share_prefixes": False, **common},
    ]


def _tokens_per_s(url: str, bodies: list[dict[str, Any]], model: str) -> float:
    """Output tokens per second of one batch, from create to ended."""
    requests = [
        {"custom_id": f"r{i}", "params": {**b, "model": model}} for i, b in enumerate(bodies)
    ]
    started = time.perf_counter()
    batch = harness.post_json(
        f"{url}/v1/messages/batches", json.dumps({"requests": requests}).encode()
    )
    ended = harness.wait_ended(url, batch["id"])
    took = time.perf_counter() - started
    assert ended["request_counts"]["succeeded"] == len(bodies), ended
    with urllib.request.urlopen(f"{url}/v1/messages/batches/{batch['id']}/results") as answer:
        lines = [json.loads(line) for line in answer.read().splitlines()]
    tokens: int = sum(line["result"]["message"]["usage"]["output_tokens"] for line in lines)
    return tokens / took


class Library:
    """The library on its own: the baselines."""

    def __init__(self, model: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model)
        auto: Any = AutoModelForCausalLM  # an untyped factory
        self.model: Any = auto.from_pretrained(model).eval()
        self.path = model
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id

    def prompt(self, body: dict[str, Any]) -> list[int]:
        chat = [{"role": "system", "content": body["system"]}] if "system" in body else []
        text = self.tokenizer.apply_chat_template(
            chat + body["messages"], add_generation_prompt=True, tokenize=False
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _count(self, rows: Any) -> int:
        """Generated tokens up to and including each row's end-of-turn token."""
        total = 0
        for row in rows.tolist():
            total += row.index(self.eos) + 1 if self.eos in row else len(row)
        return total

    def padded(
        self, prompts: Sequence[list[int]], new: int, batch_size: int, threads: int
    ) -> float:
        self.torch.set_num_threads(threads)
        tokens, started = 0, time.perf_counter()
        for at in range(0, len(prompts), batch_size):
            group = prompts[at : at + batch_size]
            width = max(len(p) for p in group)
            ids = [[self.pad] * (width - len(p)) + p for p in group]
            mask = [[0] * (width - len(p)) + [1] * len(p) for p in group]
            with self.torch.inference_mode():
                out = self.model.generate(
                    input_ids=self.torch.tensor(ids),
                    attention_mask=self.torch.tensor(mask),
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=self.pad,
                )
            tokens += self._count(out[:, width:])
        return tokens / (time.perf_counter() - started)

    def single(self, prompts: Sequence[list[int]], new: int, threads: int) -> float:
        self.torch.set_num_threads(threads)
        tokens, started = 0, time.perf_counter()
        for prompt in prompts:
            with self.torch.inference_mode():
                out = self.model.generate(
                    self.torch.tensor([prompt]),
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=self.pad,
                )
            tokens += self._count(out[:, len(prompt) :])
        return tokens / (time.perf_counter() - started)


def local(size: dict[str, Any], repeat: int, workdir: Path) -> list[Row]:
    model = build_tiny_model(workdir / "tiny-model")
    embedding = embeddings.Measure(size, workdir)
    library = Library(model)
    n, new, batch_size = size["prompts"], size["new_tokens"], size["batch_size"]
    workloads = [workload(n, new, words) for words in (0, size["system"])]
    # batchd, in its own process: each workload with prefix sharing on and off
    runs: list[list[tuple[float, float]]] = [[] for _ in workloads]
    # the shared workload again, its requests in the batch ordered by system prompt: what
    # claiming by prefix would give the engine (the batch interleaves the four otherwise)
    in_prefix_order = sorted(workloads[1], key=lambda body: str(body.get("system")))
    ordered: list[float] = []
    for _ in range(repeat):
        backends = [*_backends(model, batch_size), embeddings.backend(embedding.model, batch_size)]
        with harness.batchd(workdir / "local", backends=backends) as server:
            # The first full-size batches into torch are slow (measured: whichever of the
            # two backends ran first lost 25-40% with a warm-up of 8 requests): warm both
            # with a whole batch.
            for warm_up in (MODEL, f"{MODEL}-unshared"):
                _tokens_per_s(server.url, workloads[0], warm_up)
            for bodies, figures in zip(workloads, runs, strict=True):
                shared = _tokens_per_s(server.url, bodies, MODEL)
                figures.append((shared, _tokens_per_s(server.url, bodies, f"{MODEL}-unshared")))
            ordered.append(_tokens_per_s(server.url, in_prefix_order, MODEL))
            embedding.run(server.url)
    rows = []
    thread_counts = sorted({1, os.cpu_count() or 1})
    for bodies, figures in zip(workloads, runs, strict=True):
        prompts = [library.prompt(b) for b in bodies]
        shared, unshared = sorted(figures)[len(figures) // 2]
        # the library's best: torch on every core (its default) or on one, as batchd on 2 cores
        padded = max(
            harness.median_of(
                repeat,
                functools.partial(library.padded, prompts, new, batch_size, threads),
                key=float,
            )
            for threads in thread_counts
        )
        single = max(library.single(prompts[: size["single"]], new, t) for t in thread_counts)
        row: Row = {
            "prompts": n,
            "prompt_tokens": round(sum(map(len, prompts)) / n),
            "batchd_tok_s": round(shared),
            "unshared_tok_s": round(unshared),
            "padded_tok_s": round(padded),
            "single_tok_s": round(single),
        }
        row["of_padded"] = round(shared / padded, 2)
        row["vs_single"] = round(shared / single, 1)
        row["sharing_gain"] = round(shared / unshared, 2)
        if bodies is workloads[1]:
            row["prefix_ordered_tok_s"] = round(sorted(ordered)[len(ordered) // 2])
            row["ordering_gain"] = round(row["prefix_ordered_tok_s"] / shared, 2)
        rows.append(row)
    rows.append(embedding.row(repeat))
    return rows
