"""The client commands of batchd's own extensions, the real `batchd` command against a live
server: results followed while a batch runs, an interrupted wait that keeps what it had,
retries of what failed and their merged results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anthropic

from tests.conftest import StartServer, mock_request, wait_until
from tests.support.upstream import (
    FakeUpstream,
    Fault,
    invalid_request,
    serve_upstream,
    upstream_backend,
)
from tests.test_client_cli import BATCHD, _write, batchd


def _backend(upstream: FakeUpstream) -> dict[str, Any]:
    return upstream_backend(upstream, max_concurrency=2, adaptive_concurrency=False)


def _prompts(path: Path, n: int) -> Path:
    return _write(path, *(mock_request(f"q{i}", f"q{i}", model="claude-1") for i in range(n)))


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _spawn(*args: str, url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    return subprocess.Popen(
        [*BATCHD, *args, "--url", url, "--interval", "0.05"],
        stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def test_follow_writes_lines_as_they_are_recorded(
    start_server: StartServer, held: FakeUpstream, tmp_path: Path
) -> None:
    server = start_server(backends=[_backend(held)])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(
            requests=[mock_request(f"q{i}", f"q{i}", model="claude-1") for i in range(6)]
        )
    out = tmp_path / "followed.jsonl"
    following = _spawn(
        "batches", "results", batch.id, "--follow", "--out", str(out), url=server.url
    )
    held.release(2)
    wait_until(lambda: _count_lines(out) == 2, "the first two results were not written")
    assert following.poll() is None  # still following: the batch runs
    held.release()
    _, stderr = following.communicate(timeout=30)
    assert following.returncode == 0, stderr
    ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"q{i}" for i in range(6)]  # each once


def test_an_interrupted_wait_keeps_the_results_it_had(
    start_server: StartServer, held: FakeUpstream, tmp_path: Path
) -> None:
    server = start_server(backends=[_backend(held)])
    out = tmp_path / "out.jsonl"
    waiting = _spawn(
        "submit", str(_prompts(tmp_path / "in.jsonl", 6)), "--wait", "--out", str(out),
        url=server.url,
    )  # fmt: skip
    held.release(3)
    kept = tmp_path / "out.jsonl.part"
    wait_until(lambda: _count_lines(kept) == 3, "the recorded results were not written")
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=30)
    assert waiting.returncode == 130, stderr
    assert f"the results recorded so far are in {kept}" in " ".join(stderr.split())
    assert _count_lines(kept) == 3
    assert not out.exists()


FAILING = {"q1", "q4"}


def _fails_once(key: str, attempt: int) -> Fault | None:
    return invalid_request("chosen to fail") if key in FAILING and attempt == 1 else None


def test_retry_then_merged_gives_each_custom_id_its_latest_result(
    start_server: StartServer, tmp_path: Path
) -> None:
    with serve_upstream(faults=_fails_once) as upstream:
        server = start_server(backends=[{**_backend(upstream), "max_concurrency": 8}])
        first = batchd(
            "submit", str(_prompts(tmp_path / "in.jsonl", 6)), "--wait", "--out",
            str(tmp_path / "first.jsonl"), url=server.url,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        batch_id = first.stderr.split("batch: ")[1].split()[0]
        retried = batchd(
            "batches", "retry", batch_id, "--wait", "--out", str(tmp_path / "retry.jsonl"),
            url=server.url,
        )  # fmt: skip
        assert retried.returncode == 0, retried.stderr
        retry_id = retried.stderr.split(" as ")[1].split()[0]
        merged = batchd("batches", "results", retry_id, "--merged", "--json", url=server.url)
        shown = batchd("batches", "show", retry_id, url=server.url)
    retry_lines = (tmp_path / "retry.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in retry_lines) == sorted(FAILING)
    assert merged.returncode == 0, merged.stderr
    results = [json.loads(line) for line in merged.stdout.splitlines()]
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(6)]  # each once
    assert {r["result"]["type"] for r in results} == {"succeeded"}  # the retry's, where retried
    [link] = [line.split() for line in shown.stdout.splitlines() if "retry of" in line]
    assert link == ["retry", "of", batch_id]
