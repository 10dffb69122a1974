"""/metrics: Prometheus text format that parses, with figures that move as a batch runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx2 as httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer, mock_request, wait_ended, wait_until

SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 2,
    "latency_ms": 100,
}


def scrape(
    url: str, key: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, sorted labels)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _states(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {labels[0][1]: v for (name, labels), v in samples.items() if name == "batchd_requests"}


def test_request_states_and_queue_depth_move_as_a_batch_runs(start_server: StartServer) -> None:
    server = start_server(backends=[SLOW_BACKEND])
    before = scrape(server.url)
    assert before[("batchd_queue_depth", (("backend", "slow"),))] == 0
    assert set(_states(before).values()) == {0}
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(
            requests=[mock_request(f"r{i}", model="slow-1") for i in range(20)]
        )
        running = scrape(server.url)
        wait_ended(client, batch.id)
    after = scrape(server.url)

    states = _states(running)
    assert sum(states.values()) == 20
    assert states["queued"] + states["running"] > 0
    assert running[("batchd_queue_depth", (("backend", "slow"),))] == states["queued"]
    assert _states(after) == {
        "queued": 0, "running": 0, "succeeded": 20, "errored": 0, "canceled": 0, "expired": 0,
    }  # fmt: skip
    assert after[("batchd_queue_depth", (("backend", "slow"),))] == 0
    assert after[("batchd_queue_depth", (("backend", "mock"),))] == 0


def test_the_engine_metrics_are_exposed_beside_them(start_server: StartServer) -> None:
    server = start_server()
    response = httpx.get(f"{server.url}/metrics")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"batchd_backend_in_flight", "batchd_upstream_latency_seconds"} <= names
    assert {"batchd_requests", "batchd_queue_depth"} <= names


def test_request_and_batch_counters_say_which_face_the_batch_came_through(
    start_server: StartServer,
) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as claude:
        batch = claude.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(3)])
        wait_ended(claude, batch.id)
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        file = client.files.create(file=("in.jsonl", openai_lines(2)), purpose="batch")
        created = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(
            lambda: client.batches.retrieve(created.id).status == "completed",
            "the OpenAI batch did not complete",
        )
    samples = scrape(server.url)

    for dialect, requests in (("anthropic", 3), ("openai", 2)):
        labels = (("dialect", dialect),)
        assert samples[("batchd_batches_created_total", labels)] == 1
        assert samples[("batchd_batches_ended_total", labels)] == 1
        finished = (("backend", "mock"), ("dialect", dialect), ("state", "succeeded"))
        assert samples[("batchd_requests_finished_total", finished)] == requests


def openai_lines(n: int) -> bytes:
    body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    return b"".join(
        json.dumps(
            {"custom_id": f"o{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        ).encode()
        + b"\n"
        for i in range(n)
    )


def _key(db: Path, name: str, *flags: str) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "keys", "create", name, *flags,
         "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return created.stdout.strip()


def test_metrics_need_an_operator_key_once_keys_exist(
    start_server: StartServer, tmp_path: Path
) -> None:
    prometheus = _key(tmp_path / "batchd.db", "prometheus", "--operator")
    tenant = _key(tmp_path / "batchd.db", "tenant")
    server = start_server()
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    bad = httpx.get(f"{server.url}/metrics", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    # Every workspace's volumes: not for a key of one workspace.
    refused = httpx.get(f"{server.url}/metrics", headers={"x-api-key": tenant})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert ("batchd_queue_depth", (("backend", "mock"),)) in scrape(server.url, prometheus)
