"""SIGKILL mid-batch under the OpenAI face: the server on SQLite, a worker on PostgreSQL.

An OpenAI batch runs on the one engine, so a kill loses and duplicates nothing: once it
has ended, every custom_id of its input file is in its output or error file exactly once,
and its counts agree with those lines. (The Message Batches face's rounds are in
``test_kills.py``; this holds the OpenAI face's files to the same.)
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from random import Random
from typing import Literal

import openai
from openai.types import Batch

from tests.faults.conftest import Database, Tally
from tests.support.cluster import Cluster

HANG = 90.0  # seconds: a batch that has not ended by then is hung
CHAT: Literal["/v1/chat/completions"] = "/v1/chat/completions"


def input_file(ids: list[str]) -> bytes:
    lines = [
        {
            "custom_id": i,
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": "claude-faults",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": i}],
            },
        }
        for i in ids
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_for(client: openai.OpenAI, batch_id: str, completed: float) -> Batch:
    """Poll until the batch is final or has ``completed`` lines done."""
    deadline = time.monotonic() + HANG
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        assert counts is not None
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        if counts.completed + counts.failed >= completed:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} hung: {counts}"
        time.sleep(0.01)


def custom_ids(client: openai.OpenAI, file_id: str | None) -> list[str]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line)["custom_id"] for line in text.splitlines()]


def test_a_kill_mid_batch_loses_and_duplicates_no_line(
    cluster: Cluster, database: Database, rng: Random, tally: Tally
) -> None:
    target = "server" if database.kind == "sqlite" else "worker"
    n = rng.randint(150, 300)
    ids = [f"line-{i}" for i in range(n)]
    with openai.OpenAI(
        base_url=cluster.url + "/v1", api_key="sk-test", max_retries=0, timeout=30
    ) as client:
        file = client.files.create(file=("in.jsonl", io.BytesIO(input_file(ids))), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        seen = wait_for(client, batch.id, rng.uniform(0.2, 0.8) * n)
        if target == "server":
            cluster.kill_api()
            cluster.restart_api()
        else:
            cluster.kill_worker(0)
            cluster.restart_worker(0)

        done = wait_for(client, batch.id, completed=n + 1)
        assert done.status == "completed"
        output = custom_ids(client, done.output_file_id)
        errors = custom_ids(client, done.error_file_id)
        assert Counter(output + errors) == Counter(ids)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (
            len(output),
            len(errors),
        )
    assert database.mismatches() == []
    hit = seen.status == "in_progress"
    tally[f"openai kills: {target} mid-batch{'' if hit else ' (too late: ended)'}"] += 1
