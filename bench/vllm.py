"""kind = "vllm" against vLLM on its own, on a GPU machine with vllm installed.

The same prompts (``bench.local.workload``: short prompts, and interleaved long shared
system prompts), greedy, output tokens per second of:

* batchd: a batch through ``batchd serve`` with a ``kind = "vllm"`` backend (claims in
  prefix-key order feeding vLLM's ``AsyncLLM``, prefix caching on);
* ``offline``: vLLM's own ``LLM.generate`` over all the prompts at once (its best case:
  one call, its scheduler sees everything), in a child process;
* ``serve``: ``vllm serve`` with the prompts sent over HTTP to ``/v1/completions``,
  ``concurrency`` at once (how an HTTP-only batch runner uses it).

Each runs in its own process, one after the other, so that each has the GPU to itself.
The model is the tiny one the tests build unless ``BATCHD_BENCH_VLLM_MODEL`` names a model
directory. Skipped, saying so, where vllm is not installed (the development machine).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.tiny_model import build_tiny_model

from bench import harness, local

Row = dict[str, Any]
_OFFLINE = """
import json, sys, time
from vllm import LLM, SamplingParams, TokensPrompt
model, path = sys.argv[1], sys.argv[2]
jobs = json.load(open(path))
llm = LLM(model=model, enable_prefix_caching=True)
prompts = [TokensPrompt(prompt_token_ids=p) for p, _ in jobs]
params = [SamplingParams(max_tokens=m, temperature=0) for _, m in jobs]
llm.generate(prompts[:8], params[:8])  # warm-up
started = time.perf_counter()
outputs = llm.generate(prompts, params)
took = time.perf_counter() - started
print(json.dumps(sum(len(o.outputs[0].token_ids) for o in outputs) / took))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def offline(model: str, jobs: list[tuple[list[int], int]], workdir: Path) -> float:
    path = workdir / "vllm-jobs.json"
    path.write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE, model, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return float(done.stdout.strip().splitlines()[-1])


async def _send_all(url: str, jobs: list[tuple[list[int], int]], concurrency: int) -> int:
    import openai

    gate = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600) as client:

        async def one(prompt: list[int], max_tokens: int) -> int:
            async with gate:
                answer = await client.completions.create(
                    model="m", prompt=prompt, max_tokens=max_tokens, temperature=0
                )
                return answer.usage.completion_tokens if answer.usage else 0

        return sum(await asyncio.gather(*(one(p, m) for p, m in jobs)))


def serve(model: str, jobs: list[tuple[list[int], int]], concurrency: int) -> float:
    port = _free_port()
    command = ["vllm", "serve", model, "--port", str(port), "--served-model-name", "m"]
    server = subprocess.Popen([*command, "--enable-prefix-caching"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("vllm serve did not start") from None
                time.sleep(2)  # a child process starting: nothing to wait on but its port
        asyncio.run(_send_all(url, jobs[:8], concurrency))  # warm-up
        started = time.perf_counter()
        tokens = asyncio.run(_send_all(url, jobs, concurrency))
        return tokens / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait(timeout=60)


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm(size: dict[str, Any], repeat: int, workdir: Path) -> list[Row]:  # noqa: ARG001
    if not installed():
        return [{"skipped": "vllm is not installed (the vllm extra, on a GPU machine)"}]
    model = os.environ.get("BATCHD_BENCH_VLLM_MODEL") or str(
        build_tiny_model(workdir / "tiny-model")
    )
    library = local.Library(Path(model))
    n, new, batch = size["prompts"], size["new_tokens"], size["batch_size"]
    rows = []
    for name, bodies in (
        ("short", local.workload(n, new, 0)),
        ("shared", local.workload(n, new, size["system"], size["prefixes"])),
    ):
        backend = {
            "name": "vllm",
            "kind": "vllm",
            "model_path": model,
            "models": [local.MODEL],
            "max_batch_size": batch,
            "max_concurrency": 2 * batch,
        }
        with harness.batchd(workdir / f"vllm-{name}", backends=[backend]) as server:
            local.run_batch(server.url, bodies[: 2 * batch], local.MODEL)  # warm-up
            batchd = local.run_batch(server.url, bodies, local.MODEL)[0]
        jobs = [(library.prompt(b), b["max_tokens"]) for b in bodies]
        alone = offline(model, jobs, workdir)
        http = serve(model, jobs, 2 * batch)
        rows.append(
            {
                "workload": name,
                "prompts": n,
                "batchd_tok_s": round(batchd),
                "offline_tok_s": round(alone),
                "serve_tok_s": round(http),
                "of_offline": round(batchd / alone, 2),
                "vs_serve": round(batchd / http, 2),
            }
        )
    return rows
