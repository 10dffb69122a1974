"""batchd's transformers engine against the library's own batching, on one GPU, in memory.

    python bench/gpu_local.py                 # CUDA, a random Qwen2 of ~0.5B in bf16
    python bench/gpu_local.py --size tiny --device cpu   # the same code, in seconds

Self-contained for a bare GPU machine: it imports torch, transformers and batchd's engine
modules (``batchd.backends.local.{generation,batching,transformers_engine}``, which need
only the standard library beside torch and transformers), from this checkout's ``src``,
without the rest of batchd (no server, no store, no HTTP). The model is built from a
config with random weights (nothing is downloaded); prompts are random token ids and the
"tokenizer" is a stand-in that only knows the end-of-turn and padding ids.

Workloads (the issue's, token-level), output tokens per second:

* ``short``: short prompts (16-128 tokens), ``max_tokens`` 64 for all;
* ``mixed``: the same prompts, ``max_tokens`` drawn from 8 to 256;
* ``shared``: BatchLLM-like: every prompt is one of ``prefixes`` long shared prefixes plus
  a few tokens of its own, the prefixes interleaved in the batch (request i has prefix
  i mod P), ``max_tokens`` from 8 to 64. batchd runs it fed in the batch's order (``fifo``) and in
  prefix-key order (``planned``: what its claim order gives the engine), and reports the
  prompt tokens it computed against the least possible (each distinct prefix once).

Baselines: the library's ``generate`` over left-padded groups of ``batch`` prompts, in
the batch's order and sorted by ``max_tokens`` then length (the better one is its
"best"), and where it runs, the library's own continuous batching (``generate_batch``,
one ``max_tokens`` for a call: the ``short`` workload only). A section is skipped, and
says so, once ``--budget`` seconds have gone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

SIZES: dict[str, dict[str, int]] = {
    # ~0.5B: Qwen2.5-0.5B's shape
    "full": {"hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2,
             "vocab": 151_936, "requests": 512, "batch": 64, "prefixes": 48,
             "prefix_tokens": 1024},
    "tiny": {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2,
             "vocab": 320, "requests": 48, "batch": 8, "prefixes": 6, "prefix_tokens": 96},
}  # fmt: skip


def _engine() -> types.ModuleType:
    """batchd's engine module, without importing ``batchd.backends``' package (its
    ``__init__`` brings the router, the config and their dependencies)."""
    src = Path(__file__).resolve().parents[1] / "src"
    sys.path.insert(0, str(src))
    package = types.ModuleType("batchd.backends")
    package.__path__ = [str(src / "batchd" / "backends")]
    sys.modules.setdefault("batchd.backends", package)
    import batchd.backends.local.transformers_engine as engine

    return engine


class StandInTokenizer:
    """What the engine asks of a tokenizer when no request has stop sequences."""

    def __init__(self, eos: int, pad: int) -> None:
        self.eos_token_id, self.pad_token_id = eos, pad

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:  # noqa: ARG002
        return " ".join(map(str, ids))


def build_model(size: dict[str, int], device: str) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=32_768,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=size["vocab"] - 1,
        pad_token_id=size["vocab"] - 2,
    )
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = Qwen2ForCausalLM(config)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


Request = tuple[list[int], int]  # prompt ids, max_tokens


def workloads(size: dict[str, int], seed: int = 1) -> dict[str, list[Request]]:
    rng = random.Random(seed)
    n, vocab = size["requests"], size["vocab"] - 2

    def tokens(k: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(k)]

    short = [tokens(rng.randint(16, 128)) for _ in range(n)]
    prefixes = [tokens(size["prefix_tokens"]) for _ in range(size["prefixes"])]
    shared = [prefixes[i % len(prefixes)] + tokens(rng.randint(8, 64)) for i in range(n)]
    return {
        "short": [(p, 64) for p in short],
        "mixed": [(p, rng.randint(8, 256)) for p in short],
        "shared": [(p, rng.randint(8, 64)) for p in shared],
    }


def least_prompt_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Prompt tokens computed if every shared prefix were computed once: the size of the
    prompts' trie (in sorted order, each prompt adds what it does not share with the last)."""
    total, before = 0, None
    for prompt in sorted(tuple(p) for p in prompts):
        shared = 0
        if before is not None:
            while shared < min(len(prompt), len(before)) and prompt[shared] == before[shared]:
                shared += 1
        total += len(prompt) - shared
        before = prompt
    return total


class Library:
    """The library on its own: padded ``generate``, and ``generate_batch``."""

    def __init__(self, model: Any, device: str, batch: int) -> None:
        self.model, self.device, self.batch = model, device, batch
        self.eos = model.generation_config.eos_token_id
        self.pad = model.generation_config.pad_token_id

    def padded(self, requests: Sequence[Request]) -> int:
        """Useful output tokens of one ``generate`` per group of ``batch`` requests."""
        useful = 0
        for at in range(0, len(requests), self.batch):
            group = requests[at : at + self.batch]
            width = max(len(p) for p, _ in group)
            ids = [[self.pad] * (width - len(p)) + p for p, _ in group]
            mask = [[0] * (width - len(p)) + [1] * len(p) for p, _ in group]
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=torch.tensor(ids, device=self.device),
                    attention_mask=torch.tensor(mask, device=self.device),
                    max_new_tokens=max(m for _, m in group),
                    do_sample=False,
                    pad_token_id=self.pad,
                )
            for row, (_, max_tokens) in zip(out[:, width:].tolist(), group, strict=True):
                row = row[:max_tokens]
                useful += row.index(self.eos) + 1 if self.eos in row else len(row)
        return useful

    def generate_batch(self, requests: Sequence[Request]) -> int:
        from transformers import GenerationConfig

        [max_tokens] = {m for _, m in requests}  # one setting for the whole call
        make: Any = GenerationConfig  # untyped
        config = make(
            max_new_tokens=max_tokens, do_sample=False, eos_token_id=self.eos, pad_token_id=self.pad
        )
        with torch.inference_mode():
            outputs = self.model.generate_batch(
                inputs=[p for p, _ in requests], generation_config=config
            )
        return sum(len(o.generated_tokens) for o in outputs.values())


async def batchd_run(
    engine: types.ModuleType, model: Any, device: str, batch: int, requests: Sequence[Request]
) -> tuple[int, int]:
    """(output tokens, prompt tokens computed) of batchd's engine over the requests, fed in
    their order (all at once, as claims keep its queue full)."""
    generation = sys.modules["batchd.backends.local.generation"]
    tokenizer = StandInTokenizer(model.generation_config.eos_token_id, model.config.pad_token_id)
    generator = engine.TransformersGenerator(
        "", tokenizer, device=device, max_batch=batch, model=model
    )
    await generator.start()
    try:
        greedy = generation.Sampling(0.0)
        jobs = [generation.Job(p, m, (), greedy) for p, m in requests]
        done = await asyncio.gather(*(generator.generate(job) for job in jobs))
    finally:
        await generator.close()
    return sum(len(d.tokens) for d in done), generator.batcher.computed_tokens


def say(line: str) -> None:
    """A line of the report, at once (rich is not on the bare GPU machine)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def timed(run: Callable[[], Any], device: str) -> tuple[Any, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    value = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds for all sections")
    parser.add_argument("--requests", type=int, default=None, help="requests per workload")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    size = dict(SIZES[args.size])
    if args.requests:
        size["requests"] = args.requests
    engine = _engine()
    if args.device == "cpu":  # one thread: steady on a shared machine (see bench/local.py)
        torch.set_num_threads(1)
    model = build_model(size, args.device)
    params = sum(p.numel() for p in model.parameters())
    say(f"model: random Qwen2, {params / 1e6:.0f}M parameters, {args.device}")
    say(f"torch {torch.__version__}, transformers {transformers.__version__}")
    library = Library(model, args.device, size["batch"])
    loads = workloads(size)
    batch = size["batch"]

    def batchd(requests: Sequence[Request]) -> tuple[int, int]:
        return asyncio.run(batchd_run(engine, model, args.device, batch, requests))

    # warm-up: kernels, allocator, the first full-size batch of each path
    warm = loads["short"][: 2 * batch]
    library.padded(warm)
    batchd(warm)
    rows: list[tuple[str, str, float, str]] = []

    def measure(workload: str, method: str, run: Callable[[], Any], note: str = "") -> Any:
        if time.perf_counter() - started > args.budget:
            rows.append((workload, method, float("nan"), "skipped: out of time"))
            return None
        try:
            value, took = timed(run, args.device)
        except Exception as exc:  # a baseline the library cannot run here is reported
            rows.append((workload, method, float("nan"), f"failed: {exc!r:.80}"))
            return None
        tokens = value[0] if isinstance(value, tuple) else value
        rows.append((workload, method, tokens / took, note))
        say(f"  {workload:7} {method:28} {tokens / took:10,.0f} tok/s  {note}")
        return value

    for name in ("short", "mixed"):
        requests = loads[name]
        measure(name, "batchd (continuous)", functools.partial(batchd, requests))
        measure(name, "generate, padded, batch order", functools.partial(library.padded, requests))
        ordered = sorted(requests, key=lambda r: (r[1], len(r[0])))
        measure(name, "generate, padded, sorted", functools.partial(library.padded, ordered))
        if name == "short":
            paged = functools.partial(library.generate_batch, requests)
            measure(name, "generate_batch (paged)", paged)
    shared = loads["shared"]
    least = least_prompt_tokens([p for p, _ in shared])
    total = sum(len(p) for p, _ in shared)
    planned = sorted(shared, key=lambda r: r[0])  # the claim order by prefix key
    for method, requests in (("batchd fifo", shared), ("batchd planned", planned)):
        got = measure("shared", method, functools.partial(batchd, requests))
        if got is not None:
            rows[-1] = (
                *rows[-1][:3],
                f"prompt tokens computed {got[1]:,} (least {least:,}, all {total:,})",
            )
            say(f"    {rows[-1][3]}")
    measure("shared", "generate, padded, batch order", lambda: library.padded(shared))
    measure("shared", "generate, padded, sorted", lambda: library.padded(planned))

    say("\n| workload | method | output tokens/s | note |\n|---|---|---|---|")
    for workload, method, rate, note in rows:
        say(f"| {workload} | {method} | {rate:,.0f} | {note} |")
    say(f"\n({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
