"""The client commands: the real `batchd` command against a live server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.server import RunningServer

BATCHD = [sys.executable, "-m", "batchd.cli"]
SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 2,
    "latency_ms": 100,
}


def batchd(
    *args: str, url: str, key: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env["BATCHD_URL"] = url
    if key:
        env["BATCHD_API_KEY"] = key
    return subprocess.run(
        [*BATCHD, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_submit_wait_writes_the_results(server: RunningServer, tmp_path: Path) -> None:
    infile = _write(
        tmp_path / "in.jsonl", *(mock_request(f"q{i}", f"question {i}") for i in range(5))
    )
    out = tmp_path / "out.jsonl"
    done = batchd("submit", str(infile), "--wait", "--out", str(out), url=server.url)
    assert done.returncode == 0, done.stderr
    results = _lines(out)
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(5)]
    assert [r["result"]["message"]["content"][0]["text"] for r in results] == [
        f"Mock reply: question {i}" for i in range(5)
    ]
    assert "5 succeeded" in done.stderr


def test_bare_params_and_prompts_get_generated_ids(server: RunningServer, tmp_path: Path) -> None:
    infile = _write(
        tmp_path / "in.jsonl",
        "Why is the sky blue?",
        {"messages": [{"role": "user", "content": "bare"}]},
        mock_request("mine", "explicit"),
    )
    out = tmp_path / "out.jsonl"
    done = batchd(
        "submit", str(infile), "--model", "mock", "--max-tokens", "8", "--wait", "--out", str(out),
        url=server.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "line 1 -> line-1" in done.stderr
    assert "line 2 -> line-2" in done.stderr
    texts = {r["custom_id"]: r["result"]["message"]["content"][0]["text"] for r in _lines(out)}
    assert texts == {
        "line-1": "Mock reply: Why is the sky blue?",
        "line-2": "Mock reply: bare",
        "mine": "Mock reply: explicit",
    }


def test_a_file_larger_than_a_batch_is_split_and_merged(
    server: RunningServer, tmp_path: Path
) -> None:
    infile = _write(tmp_path / "in.jsonl", *(f"prompt {i}" for i in range(5)))
    out = tmp_path / "out.jsonl"
    done = batchd(
        "submit", str(infile), "--model", "mock", "--max-batch-requests", "2", "--wait",
        "--out", str(out), url=server.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "as 3 batches" in done.stderr
    assert [r["custom_id"] for r in _lines(out)] == [f"line-{i}" for i in range(1, 6)]


@pytest.mark.parametrize(
    ("content", "model", "message"),
    [
        # broken JSON on the third line
        ('a\nb\n{"custom_id": \n', ["--model", "mock"], "line 3: invalid JSON"),
        # a duplicate id
        ('{"custom_id":"a","params":{}}\n' * 2, [], "line 2: custom_id 'a' is already used"),
        # a prompt without --model
        ("hello\n", [], "line 1: a plain-text prompt needs --model"),
    ],
)
def test_a_bad_file_names_the_line_and_exits_2(
    server: RunningServer, tmp_path: Path, content: str, model: list[str], message: str
) -> None:
    infile = tmp_path / "bad.jsonl"
    infile.write_text(content)
    done = batchd("submit", str(infile), *model, url=server.url)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["batches", "list"], ["submit", "IN"]])
def test_a_server_that_is_down_is_named_and_exits_3(tmp_path: Path, command: list[str]) -> None:
    infile = _write(tmp_path / "in.jsonl", mock_request("a"))
    url = f"http://127.0.0.1:{_closed_port()}"
    done = batchd(*[str(infile) if a == "IN" else a for a in command], url=url)
    assert done.returncode == 3
    assert f"cannot reach a batchd server at {url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_key_exits_4(start_server: StartServer, tmp_path: Path) -> None:
    db = tmp_path / "batchd.db"
    created = subprocess.run(
        [*BATCHD, "keys", "create", "ops", "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    server = start_server()
    refused = batchd("batches", "list", url=server.url, key="sk-wrong")
    assert refused.returncode == 4
    assert "refused the API key" in refused.stderr
    accepted = batchd("batches", "list", "--json", url=server.url, key=created.stdout.strip())
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout) == []


def test_list_show_results_delete(
    server: RunningServer, client: anthropic.Anthropic, tmp_path: Path
) -> None:
    batch = client.messages.batches.create(
        requests=[mock_request("ok"), mock_request("bad", model="no-such-model")]
    )
    wait_ended(client, batch.id)
    listed = batchd("batches", "list", "--json", url=server.url)
    assert [b["id"] for b in json.loads(listed.stdout)] == [batch.id]
    table = batchd("batches", "list", url=server.url)
    assert batch.id in table.stdout
    assert "ended" in table.stdout
    shown = json.loads(batchd("batches", "show", batch.id, "--json", url=server.url).stdout)
    assert shown["request_counts"] == {
        "processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 0,
    }  # fmt: skip
    errored = batchd("batches", "results", batch.id, "--json", "--only", "errored", url=server.url)
    [line] = [json.loads(x) for x in errored.stdout.splitlines()]
    assert (line["custom_id"], line["result"]["error"]["error"]["type"]) == (
        "bad",
        "not_found_error",
    )
    human = batchd("batches", "results", batch.id, url=server.url)
    assert "Mock reply: hello" in human.stdout
    assert "not_found_error" in human.stdout
    deleted = batchd("batches", "delete", batch.id, "--json", url=server.url)
    assert json.loads(deleted.stdout) == {"id": batch.id, "type": "message_batch_deleted"}
    gone = batchd("batches", "show", batch.id, url=server.url)
    assert gone.returncode == 1
    assert "not_found_error" in gone.stderr


def test_result_tables_neither_drive_the_terminal_nor_read_markup(
    server: RunningServer, client: anthropic.Anthropic
) -> None:
    """Model output echoes untrusted input: clear-screen, window-title and clipboard escape
    sequences must not reach the terminal, and rich markup in it is shown as written."""
    hostile = (
        "\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZWNobyBvd25lZA==\x07[link=https://evil.example]x[/link]"
    )
    batch = client.messages.batches.create(requests=[mock_request("a", text=hostile)])
    wait_ended(client, batch.id)

    shown = batchd("batches", "results", batch.id, url=server.url)

    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout
    assert "\x07" not in shown.stdout
    assert "[2J]0;owned]52;c;ZWNobyBvd25lZA==[link=https://evil.example]x[/link]" in shown.stdout


def test_cancel(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(backends=[SLOW_BACKEND])
    infile = _write(tmp_path / "in.jsonl", *(f"p{i}" for i in range(200)))
    submitted = batchd("submit", str(infile), "--model", "slow-1", url=server.url)
    batch_id = submitted.stdout.strip()
    canceled = batchd("batches", "cancel", batch_id, "--json", url=server.url)
    assert json.loads(canceled.stdout)["processing_status"] == "canceling"
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        counts = wait_ended(client, batch_id).request_counts
    assert counts.canceled > 100
    again = batchd("batches", "cancel", batch_id, url=server.url)
    assert again.returncode == 1
    assert "already ended" in again.stderr


def test_ctrl_c_leaves_the_batches_running_and_says_how_to_resume(
    start_server: StartServer, tmp_path: Path
) -> None:
    # 3 s of work, so that on a busy machine the interrupt still lands before the batch ends
    server = start_server(backends=[{**SLOW_BACKEND, "latency_ms": 300}])
    infile = _write(tmp_path / "in.jsonl", *(f"p{i}" for i in range(20)))
    out = tmp_path / "out.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    waiting = subprocess.Popen(
        [*BATCHD, "submit", str(infile), "--model", "slow-1", "--wait", "--out", str(out),
         "--url", server.url, "--interval", "0.1"],
        stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl-C as a terminal delivers it, even where this suite runs with SIGINT ignored
        # (a background job of a shell without job control)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert waiting.stderr is not None
    while "submitted" not in waiting.stderr.readline():
        assert waiting.poll() is None
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=20)
    assert waiting.returncode == 130, stderr
    resume = next(line.split() for line in stderr.splitlines() if "batchd batches wait" in line)
    assert not out.exists()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        assert client.messages.batches.retrieve(resume[3]).processing_status == "in_progress"
    started = time.monotonic()
    resumed = batchd(*resume[1:], url=server.url)
    assert resumed.returncode == 0, resumed.stderr
    assert time.monotonic() - started < 20
    assert len(_lines(out)) == 20


def test_the_readme_first_try_runs(server: RunningServer, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", readme, re.S) if "submit" in b)
    script = block.replace(".venv/bin/batchd", f"{sys.executable} -m batchd.cli")
    env = {**os.environ, "BATCHD_URL": server.url}
    done = subprocess.run(
        ["bash", "-euc", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    results = _lines(tmp_path / "results.jsonl")
    assert [(r["custom_id"], r["result"]["type"]) for r in results] == [
        ("line-1", "succeeded"), ("line-2", "succeeded"), ("line-3", "succeeded"),
    ]  # fmt: skip


def test_submit_runs_a_vllm_run_batch_file_through_the_openai_face(
    server: RunningServer, tmp_path: Path
) -> None:
    """A `vllm run-batch` input file, unchanged: chat and embeddings lines mixed (one OpenAI
    batch per url), results written in OpenAI's output format, in input order."""
    chat = {"model": "mock", "messages": [{"role": "user", "content": "Hello world!"}]}
    lines = [
        {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": chat},
        {"custom_id": "request-2", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "mock", "input": "You are a helpful assistant."}},
        {"custom_id": "request-3", "method": "POST", "url": "/v1/chat/completions",
         "body": chat | {"max_completion_tokens": 1000}},
    ]  # fmt: skip
    infile = _write(tmp_path / "vllm.jsonl", *lines)
    out = tmp_path / "out.jsonl"

    done = batchd("submit", str(infile), "--wait", "--out", str(out), url=server.url)

    assert done.returncode == 0, done.stderr
    results = _lines(out)
    assert [r["custom_id"] for r in results] == ["request-1", "request-2", "request-3"]
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)
    assert results[0]["response"]["body"]["object"] == "chat.completion"
    assert results[1]["response"]["body"]["data"][0]["object"] == "embedding"
    assert "as 2 batches" in done.stderr
    assert "3 succeeded, 0 failed" in done.stderr


def test_submit_with_a_priority_and_window_and_show_them(
    server: RunningServer, tmp_path: Path
) -> None:
    infile = _write(tmp_path / "in.jsonl", mock_request("q0", "question"))
    done = batchd(
        "submit", str(infile), "--priority", "high", "--completion-window", "2h", url=server.url
    )
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.split()[0]
    shown = json.loads(batchd("batches", "show", batch_id, "--json", url=server.url).stdout)
    assert shown["batchd_schedule"]["priority"] == "high"
    assert shown["batchd_schedule"]["completion_window"] == "2h"
    table = batchd("batches", "show", batch_id, url=server.url).stdout
    assert re.search(r"priority\s+high", table)
    refused = batchd("submit", str(infile), "--completion-window", "9d", url=server.url)
    assert refused.returncode == 1
    assert "from 1h to 7d" in refused.stderr
