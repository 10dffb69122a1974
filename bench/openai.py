"""The OpenAI face's scenarios, each beside its baseline in the same run.

* ``openai_ingest``: upload (``POST /v1/files``, multipart) and create (``POST /v1/batches``)
  of a file of chat lines, against a plain script that parses and checks the same lines and
  bulk-inserts them into the same schema; and the server's peak RSS against the file.
* ``openai_embeddings``: a batch of short embeddings inputs run by the engine on the instant
  mock, against the raw claim -> execute -> record loop of the Message Batches face's
  ``engine`` scenario with the same execute (the mock's embeddings, OpenAI's output line).
"""

from __future__ import annotations

import functools
import gc
import json
import os
import secrets
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec

from batchd.backends.mock import mock_embeddings
from batchd.schemas.openai import output_line
from bench import harness, workload
from bench.scenarios import MOCK, Row, _fresh_db, claim_loop, insert_queued

CPU_TICKS_MEASURED = 10  # the CPU figures need this many clock ticks on each side

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
_decode: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])


def chat_file(lines: int, mib: float) -> bytes:
    """``lines`` realistic chat lines, padded (``user``) to about ``mib`` MiB in all."""
    requests = workload.requests(lines)
    out = []
    for request in requests:
        params = request["params"]
        messages = [{"role": "system", "content": params["system"]}] if "system" in params else []
        for message in params["messages"]:
            content = message["content"]
            if isinstance(content, list):
                content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
            messages.append({"role": message["role"], "content": content})
        body = {"model": "mock", "messages": messages, "max_tokens": params["max_tokens"]}
        out.append({"custom_id": request["custom_id"], "method": "POST", "url": CHAT, "body": body})
    natural = sum(len(json.dumps(line, separators=(",", ":"))) + 1 for line in out)
    pad = max(0, (int(mib * 2**20) - natural) // lines - len(',"user":""'))
    for line in out:
        line["body"]["user"] = "u" * pad
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in out)


def embeddings_file(lines: int) -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": EMBEDDINGS,
                "body": {"model": "mock", "input": f"short input number {i}"},
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for i in range(lines)
    )


def upload(url: str, data: bytes) -> dict[str, Any]:
    """``POST /v1/files`` as the SDK sends it: multipart, purpose then file."""
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        f"{url}/v1/files",
        data=body,
        method="POST",
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def create(url: str, file_id: str, endpoint: str) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
    return harness.post_json(f"{url}/v1/batches", json.dumps(body).encode())


def wait_done(url: str, batch_id: str, timeout: float = 900) -> dict[str, Any]:
    done = ("completed", "failed", "expired", "cancelled")
    return harness.wait_for(f"{url}/v1/batches/{batch_id}", lambda b: b["status"] in done, timeout)


# -- 1. upload + create ----------------------------------------------------------------------


def _raw_ingest(data: bytes, path: Path) -> tuple[float, float]:
    """Parse and check each line as a careful plain script would, then bulk-insert; the
    seconds it took, and its CPU seconds."""
    with closing(_fresh_db(path)) as db:
        started, cpu = time.perf_counter(), time.process_time()
        gc.disable()
        try:
            rows, seen = [], set()
            for line in data.splitlines():
                item = msgspec.json.decode(line)
                custom_id, body = item["custom_id"], item["body"]
                if custom_id in seen or item["url"] != CHAT or item["method"] != "POST":
                    raise ValueError(custom_id)
                seen.add(custom_id)
                if not isinstance(body.get("model"), str):
                    raise ValueError(custom_id)
                rows.append((custom_id, msgspec.json.encode(body)))
        finally:
            gc.enable()
        insert_queued(db, rows)
        return time.perf_counter() - started, time.process_time() - cpu


def ingest(lines: int, mib: float, repeat: int, workdir: Path) -> list[Row]:
    data = chat_file(lines, mib)

    def run() -> tuple[float, float, float, float]:
        with harness.batchd(workdir / "openai_ingest", engine=False, backends=[MOCK]) as server:
            url = server.url
            cpu = harness.cpu_seconds(server.pid)
            took, rss, idle, batch = harness.timed_create(
                server, lambda: create(url, upload(url, data)["id"], CHAT)
            )
            cpu = harness.cpu_seconds(server.pid) - cpu
            assert batch["status"] == "in_progress", batch
            return took, cpu, rss, idle

    # batchd and the plain script take turns, so that both see the machine's load alike
    runs = [(run(), _raw_ingest(data, workdir / "raw.db")) for _ in range(repeat)]
    took, cpu, rss, idle = sorted((ours for ours, _ in runs), key=lambda r: r[0])[repeat // 2]
    raw, raw_cpu = sorted(plain for _, plain in runs)[repeat // 2]  # the medians
    file_mib = len(data) / 2**20
    figures = harness.ingest_figures(took, raw, rss, idle, file_mib, "file")
    # the server's CPU seconds (not the client's) against the script's: less moved by other
    # work on the machine than the seconds; only where both span many clock ticks (a smoke
    # run's can round to none)
    cpu_figures = {}
    if min(cpu, raw_cpu) >= CPU_TICKS_MEASURED / os.sysconf("SC_CLK_TCK"):
        cpu_figures = {
            "cpu_s": round(cpu, 2),
            "raw_cpu_s": round(raw_cpu, 2),
            "cpu_ratio": round(cpu / raw_cpu, 2),
        }
    return [{"lines": lines} | figures | cpu_figures]


# -- 2. engine overhead on embeddings ----------------------------------------------------------


def _raw_loop(data: bytes, path: Path) -> float:
    """The ``engine`` scenario's raw loop, its execute the mock's embeddings and OpenAI's
    output line."""
    lines = [msgspec.json.decode(line) for line in data.splitlines()]
    with closing(_fresh_db(path)) as db:
        insert_queued(
            db, [(line["custom_id"], msgspec.json.encode(line["body"])) for line in lines]
        )
        return claim_loop(
            db, lambda custom_id, raw: output_line(custom_id, mock_embeddings(_decode.decode(raw)))
        )


def embeddings(lines: int, repeat: int, workdir: Path) -> list[Row]:
    data = embeddings_file(lines)

    def run() -> float:
        with harness.batchd(
            workdir / "openai_embeddings",
            backends=[MOCK],
            env={"BATCHD_MAX_FILE_LINES": str(lines), "BATCHD_MAX_REQUESTS_PER_BATCH": str(lines)},
        ) as server:
            file = upload(server.url, data)
            batch = create(server.url, file["id"], EMBEDDINGS)
            started = time.perf_counter()
            done = wait_done(server.url, batch["id"])
            took = time.perf_counter() - started
            assert done["request_counts"]["completed"] == lines, done
            return took

    took = harness.median_of(repeat, run, key=float)
    raw = harness.median_of(repeat, functools.partial(_raw_loop, data, workdir / "raw.db"), float)
    return [{"inputs": lines} | harness.throughput_figures(lines, took, raw)]
