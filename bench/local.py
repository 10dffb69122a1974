"""The local engine (kind = "transformers") against the library on its own, in one run.

On the tiny Llama that the tests build (``tests/support/tiny_model.py``), greedy, the same
prompts everywhere, output tokens per second of:

* batchd: a batch through ``batchd serve`` (its own process), from create to ended;
* ``padded``: the library's ``generate`` over left-padded groups of ``max_batch_size``
  prompts, in this process, the better of torch on all cores and on one, and of the
  batch's order and the order sorted by ``max_tokens`` (the library's best);
* ``single``: ``generate`` one prompt at a time (what a plain script would do), the better
  of the same two thread counts.

The library's continuous batching (``generate_batch``) is measured in
``bench/gpu_local.py`` (on the 2-core CPU it ran 0.06-0.25x of padded ``generate``, most
of each call setting its paged cache up).

Workloads, one row each:

* ``short``: short prompts, ``new_tokens`` for all;
* ``mixed``: the same prompts, ``max_tokens`` drawn from 8 to ``mixed_max`` (continuous
  batching refills a finished row; a padded group runs to its longest row);
* ``shared``: BatchLLM-like: ``prefixes`` long system prompts, interleaved in the batch
  file, ``max_tokens`` from 8 to twice ``new_tokens``, with a prefix cache that holds
  ``cache_prefixes`` of them at once; batchd in its
  prefix-key claim order beside its own first-in-first-out order (a backend with
  ``prefix_order = false``) and with prefix sharing off, and the prompt tokens each
  computed against the least possible (each distinct prefix once);
* ``tools``: every request's output forced into a Hermes tool call by the scripted
  logits processor (``tests/support/scripted.py``): the fraction read as ``tool_use``.
* ``embeddings``: the in-process embeddings engine against the library's batched forward
  pass (``bench/embeddings.py``), on another backend of the same ``batchd serve``.
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
from bench.gpu_local import least_prompt_tokens

MODEL = "tiny"
_WORDS = ["the", "model", "batch", "token", "prompt", "engine", "request", "cache", "system"]
TOOL = {"name": "lookup", "description": "find a word", "input_schema": {"type": "object"}}

Row = dict[str, Any]
Request = tuple[list[int], int]  # prompt ids, max_tokens


def workload(
    n: int, max_tokens: int | tuple[int, int], system_words: int, prefixes: int = 4, seed: int = 1
) -> list[dict[str, Any]]:
    """Messages params; with ``system_words``, request i has system prompt i mod
    ``prefixes`` (interleaved); a (low, high) ``max_tokens`` is drawn per request."""
    rng = random.Random(seed)
    systems = [
        f"System {k}: " + " ".join(rng.choice(_WORDS) for _ in range(system_words))
        for k in range(prefixes)
    ]
    bodies = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30)))
        limit = max_tokens if isinstance(max_tokens, int) else rng.randint(*max_tokens)
        body: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": limit,
            "temperature": 0,
            "messages": [{"role": "user", "content": f"{i}: {words}"}],
        }
        if system_words:
            body["system"] = systems[i % prefixes]
        bodies.append(body)
    return bodies


def tool_workload(n: int) -> list[dict[str, Any]]:
    """Requests whose answers the scripted processor forces into one Hermes tool call."""
    bodies = []
    for i in range(n):
        call = json.dumps(
            {"name": "lookup", "arguments": {"word": _WORDS[i % len(_WORDS)], "n": i}}
        )
        content = f"SCRIPT:<tool_call>{call}</tool_call>"
        bodies.append(
            {
                "model": MODEL,
                "max_tokens": 128,
                "temperature": 0,
                "tools": [TOOL],
                "messages": [{"role": "user", "content": content}],
            }
        )
    return bodies


def _backends(model: Path, batch_size: int, cache_tokens: int) -> list[dict[str, Any]]:
    """Backends on the same model: batchd as configured (``tiny``), prefix sharing off
    (``tiny-unshared``), claims in the batch file's order (``tiny-fifo``), tool calls read
    from scripted answers (``tiny-tools``)."""
    common = {
        "kind": "transformers",
        "model_path": str(model),
        "max_batch_size": batch_size,
        "max_concurrency": 2 * batch_size,
        "prefix_cache_tokens": cache_tokens,
    }
    scripted = ["tests.support.scripted:scripted"]
    return [
        {"name": "local", "models": [MODEL], **common},
        {"name": "unshared", "models": [f"{MODEL}-unshared"], "share_prefixes": False, **common},
        {"name": "fifo", "models": [f"{MODEL}-fifo"], "prefix_order": False, **common},
        {
            "name": "tools",
            "models": [f"{MODEL}-tools"],
            "tool_call_format": "hermes",
            "logits_processors": scripted,
            **common,
        },
    ]


def run_batch(
    url: str, bodies: list[dict[str, Any]], model: str
) -> tuple[float, list[dict[str, Any]]]:
    """Output tokens per second of one batch, from create to ended, and its results."""
    requests = [
        {"custom_id": f"r{i}", "params": {**b, "model": model}} for i, b in enumerate(bodies)
    ]
    started = time.perf_counter()
    batch = harness.post_json(
        f"{url}/v1/messages/batches", json.dumps({"requests": requests}).encode()
    )
    ended = harness.wait_ended(url, batch["id"])
    took = time.perf_counter() - started
    with urllib.request.urlopen(f"{url}/v1/messages/batches/{batch['id']}/results") as answer:
        lines = [json.loads(line) for line in answer.read().splitlines()]
    assert ended["request_counts"]["succeeded"] == len(bodies) or model.endswith("-tools"), ended
    tokens = sum(
        line["result"]["message"]["usage"]["output_tokens"]
        for line in lines
        if line["result"]["type"] == "succeeded"
    )
    return tokens / took, lines


def _tokens_per_s(url: str, bodies: list[dict[str, Any]], model: str) -> float:
    return run_batch(url, bodies, model)[0]


def computed_prompt_tokens(lines: list[dict[str, Any]]) -> int:
    """Prompt tokens the model computed over a batch: each request's own, plus those it
    computed into the prefix cache for the others."""
    usages = [line["result"]["message"]["usage"] for line in lines]
    return sum(u["input_tokens"] + u["cache_creation_input_tokens"] for u in usages)


def tool_calls_read(lines: list[dict[str, Any]], bodies: list[dict[str, Any]]) -> float:
    """The fraction of scripted tool calls that came back as the same ``tool_use`` block."""
    read = 0
    for line in lines:
        body = bodies[int(line["custom_id"][1:])]
        written = json.loads(body["messages"][0]["content"].split("<tool_call>")[1].split("<")[0])
        result = line["result"]
        if result["type"] != "succeeded" or result["message"]["stop_reason"] != "tool_use":
            continue
        calls = [b for b in result["message"]["content"] if b["type"] == "tool_use"]
        read += [(c["name"], c["input"]) for c in calls] == [
            (written["name"], written["arguments"])
        ]
    return read / len(bodies)


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

    def _count(self, row: list[int]) -> int:
        """Generated tokens up to and including the row's end-of-turn token."""
        return row.index(self.eos) + 1 if self.eos in row else len(row)

    def padded(self, requests: Sequence[Request], batch_size: int, threads: int) -> float:
        """Useful output tokens per second of one ``generate`` per group of requests (each
        row counted up to its own ``max_tokens``)."""
        self.torch.set_num_threads(threads)
        tokens, started = 0, time.perf_counter()
        for at in range(0, len(requests), batch_size):
            group = requests[at : at + batch_size]
            width = max(len(p) for p, _ in group)
            ids = [[self.pad] * (width - len(p)) + p for p, _ in group]
            mask = [[0] * (width - len(p)) + [1] * len(p) for p, _ in group]
            with self.torch.inference_mode():
                out = self.model.generate(
                    input_ids=self.torch.tensor(ids),
                    attention_mask=self.torch.tensor(mask),
                    max_new_tokens=max(m for _, m in group),
                    do_sample=False,
                    pad_token_id=self.pad,
                )
            rows = out[:, width:].tolist()
            tokens += sum(self._count(row[:m]) for row, (_, m) in zip(rows, group, strict=True))
        return tokens / (time.perf_counter() - started)

    def single(self, requests: Sequence[Request], threads: int) -> float:
        self.torch.set_num_threads(threads)
        tokens, started = 0, time.perf_counter()
        for prompt, new in requests:
            with self.torch.inference_mode():
                out = self.model.generate(
                    self.torch.tensor([prompt]),
                    max_new_tokens=new,
                    do_sample=False,
                    pad_token_id=self.pad,
                )
            tokens += self._count(out[0, len(prompt) :].tolist())
        return tokens / (time.perf_counter() - started)


def local(size: dict[str, Any], repeat: int, workdir: Path) -> list[Row]:
    model = build_tiny_model(workdir / "tiny-model")
    embedding = embeddings.Measure(size, workdir)
    embedding = embeddings.Measure(size, workdir)
    library = Library(model)
    n, new, batch_size = size["prompts"], size["new_tokens"], size["batch_size"]
    short = workload(n, new, 0)
    mixed = workload(n, (8, size["mixed_max"]), 0)
    # answers of varied length: rows end, and are refilled, a few at a time
    shared = workload(n, (8, 2 * new), size["system"], size["prefixes"])
    tools = tool_workload(size["tools"])
    shared_prompts = [library.prompt(b) for b in shared]
    # the prefix cache holds ``cache_prefixes`` of the shared prompts' prefixes at once
    prefix_tokens = len(shared_prompts[0]) - len(
        library.prompt({"messages": shared[0]["messages"]})
    )
    cache_tokens = size["cache_prefixes"] * (prefix_tokens + 40)
    figures: dict[str, list[float]] = {}
    computed: dict[str, int] = {}
    parsed = 0.0

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for _ in range(repeat):
        embedder = embeddings.backend(embedding.model, batch_size)
        backends = [*_backends(model, batch_size, cache_tokens), embedder]
        with harness.batchd(workdir / "local", backends=backends) as server:
            # The first full-size batches into torch are slow (measured: whichever of the
            # backends ran first lost 25-40% with a warm-up of 8 requests): warm each.
            for warm_up in (MODEL, f"{MODEL}-unshared", f"{MODEL}-fifo"):
                _tokens_per_s(server.url, short, warm_up)
            note("short", _tokens_per_s(server.url, short, MODEL))
            note("mixed", _tokens_per_s(server.url, mixed, MODEL))
            for variant in ("", "-fifo", "-unshared"):
                rate, lines = run_batch(server.url, shared, MODEL + variant)
                note("shared" + variant, rate)
                computed["shared" + variant] = computed_prompt_tokens(lines)
            rate, lines = run_batch(server.url, tools, f"{MODEL}-tools")
            parsed = tool_calls_read(lines, tools)
            embedding.run(server.url)
    median = {name: sorted(values)[len(values) // 2] for name, values in figures.items()}
    thread_counts = sorted({1, os.cpu_count() or 1})

    def padded_best(requests: list[Request]) -> float:
        """The library's best padded batching: every thread count, both orders."""
        orders = [requests, sorted(requests, key=lambda r: (r[1], len(r[0])))]
        return max(
            harness.median_of(
                repeat, functools.partial(library.padded, order, batch_size, threads), key=float
            )
            for order in orders
            for threads in thread_counts
        )

    rows = []
    for name, bodies in (("short", short), ("mixed", mixed), ("shared", shared)):
        requests = [(library.prompt(b), b["max_tokens"]) for b in bodies]
        padded = padded_best(requests)
        row: Row = {
            "workload": name,
            "prompts": n,
            "prompt_tokens": round(sum(len(p) for p, _ in requests) / n),
            "batchd_tok_s": round(median[name]),
            "padded_tok_s": round(padded),
            "of_padded": round(median[name] / padded, 2),
        }
        if name == "short":
            single = max(library.single(requests[: size["single"]], t) for t in thread_counts)
            row["single_tok_s"] = round(single)
            row["vs_single"] = round(median[name] / single, 1)
        if name == "shared":
            row["fifo_tok_s"] = round(median["shared-fifo"])
            row["vs_fifo"] = round(median["shared"] / median["shared-fifo"], 2)
            row["unshared_tok_s"] = round(median["shared-unshared"])
            row["prompt_computed"] = computed["shared"]
            row["fifo_computed"] = computed["shared-fifo"]
            row["unshared_computed"] = computed["shared-unshared"]
            row["least_computed"] = least_prompt_tokens(shared_prompts)
        rows.append(row)
    rows.append({"workload": "tools", "prompts": len(tools), "tool_calls_read": parsed})
    rows.append(embedding.row(repeat))
    return rows
