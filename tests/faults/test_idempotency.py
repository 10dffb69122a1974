"""An idempotent create survives the loss of its answer: SIGKILL between the create's commit
and its answer, then the client's retry with the same Idempotency-Key, gives one batch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anthropic
import pytest

from tests.conftest import wait_ended
from tests.faults.conftest import Database
from tests.faults.test_kills import batch_requests
from tests.support.cluster import Cluster, batchd_command
from tests.support.upstream import serve_upstream

KILL_AFTER_CREATE = "BATCHD_FAULT_KILL_AFTER_CREATE"


def test_a_create_retried_after_a_lost_answer_makes_one_batch(
    tmp_path: Path, database: Database
) -> None:
    requests = batch_requests([f"r{i}" for i in range(50)])
    key = {"Idempotency-Key": "create-once"}
    with serve_upstream() as upstream:
        cluster = Cluster(tmp_path, database.url, upstream.url, env={KILL_AFTER_CREATE: "1"})
        try:
            cluster.start_api(engine=True)
            with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
                with pytest.raises(anthropic.APIConnectionError):
                    client.messages.batches.create(requests=requests, extra_headers=key)
                assert cluster.api is not None
                assert cluster.api.wait(timeout=30) == -9  # killed after the commit
                del cluster.env[KILL_AFTER_CREATE]
                cluster.restart_api()
                batch = client.messages.batches.create(requests=requests, extra_headers=key)
                listed = [b.id for b in client.messages.batches.list()]
                ended = wait_ended(client, batch.id)
        finally:
            cluster.stop()
    assert listed == [batch.id]
    assert ended.request_counts.succeeded == len(requests)


def test_batchd_submit_resends_a_create_whose_answer_was_lost(
    tmp_path: Path, database: Database
) -> None:
    infile = tmp_path / "in.jsonl"
    infile.write_text("".join(json.dumps(r) + "\n" for r in batch_requests(["a", "b", "c"])))
    with serve_upstream() as upstream:
        cluster = Cluster(tmp_path, database.url, upstream.url, env={KILL_AFTER_CREATE: "1"})
        try:
            cluster.start_api(engine=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
            submit = subprocess.Popen(
                [*batchd_command(), "submit", str(infile), "--url", cluster.url],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            assert cluster.api is not None
            assert cluster.api.wait(timeout=30) == -9  # killed after the commit
            del cluster.env[KILL_AFTER_CREATE]
            cluster.restart_api()  # meanwhile the command sends the create again
            stdout, stderr = submit.communicate(timeout=90)
            with anthropic.Anthropic(base_url=cluster.url, api_key="k") as client:
                listed = [b.id for b in client.messages.batches.list()]
        finally:
            cluster.stop()
    assert submit.returncode == 0, stderr
    assert listed == [stdout.split()[0]]
