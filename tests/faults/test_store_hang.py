"""A PostgreSQL server that hangs (SIGSTOP: it answers nothing and accepts no one, but the
kernel still completes TCP handshakes) under a running ``batchd serve``.

The API answers 503 within the store's timeouts (connect, statement), the engine backs off,
and after SIGCONT everything resumes by itself: the batch accepted before ends with every
result once, nothing run twice, and a new batch runs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import wait_ended, wait_until
from tests.faults.conftest import Tally
from tests.faults.test_store_outage import HANG, assert_unavailable, batch_body
from tests.support.cluster import Cluster
from tests.support.invariants import pg_count_mismatches
from tests.support.postgres import PostgresServer, ephemeral_postgres
from tests.support.upstream import FakeUpstream, serve_upstream

CONNECT, STATEMENT = 2.0, 2.0  # the store's timeouts in this test, seconds
ANSWER_WITHIN = CONNECT + STATEMENT + 2.0  # an API call during the hang ends by then
N = 120


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    with ephemeral_postgres() as running:
        try:
            yield running
        finally:
            running.resume()  # never leave a stopped server behind


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.1) as running:
        yield running


def test_a_hanging_postgres_gives_503s_in_seconds_and_everything_resumes_after_it(
    tmp_path: Path, server: PostgresServer, upstream: FakeUpstream, tally: Tally
) -> None:
    db = server.new_database_sync()
    timeouts = {
        "BATCHD_DB_CONNECT_TIMEOUT_SECONDS": str(CONNECT),
        "BATCHD_DB_STATEMENT_TIMEOUT_SECONDS": str(STATEMENT),
    }
    cluster = Cluster(tmp_path, db, upstream.url, concurrency=8, env=timeouts)
    http = httpx.Client(base_url=cluster.url, headers={"x-api-key": "sk-test"}, timeout=HANG)
    client = anthropic.Anthropic(base_url=cluster.url, api_key="sk-test", max_retries=0)
    try:
        cluster.start_api(engine=True)
        with http, client:
            accepted = http.post("/v1/messages/batches", json=batch_body("before", N))
            assert accepted.status_code == 200, accepted.text
            batch_id = accepted.json()["id"]
            wait_until(
                lambda: client.messages.batches.retrieve(batch_id).request_counts.succeeded >= 10,
                "the batch did not start",
                timeout=HANG,
            )

            server.pause()
            began = time.monotonic()
            assert_unavailable(http.post("/v1/messages/batches", json=batch_body("during", 5)))
            first_answer = time.monotonic() - began
            wait_until(
                lambda: "the store is unavailable" in cluster.log("api"),
                "the engine did not notice the hang",
                timeout=HANG,
            )
            again = time.monotonic()
            assert_unavailable(http.get(f"/v1/messages/batches/{batch_id}"))
            read_answer = time.monotonic() - again
            hung_for = time.monotonic() - began
            server.resume()
            resumed = time.monotonic()

            ended = wait_ended(client, batch_id, timeout=HANG)
            recovery = time.monotonic() - resumed
            results = Counter(
                (r.custom_id, r.result.type) for r in client.messages.batches.results(batch_id)
            )
            after = client.messages.batches.create(requests=batch_body("after", 5)["requests"])
            after_ended = wait_ended(client, after.id, timeout=HANG)
    finally:
        cluster.stop()

    assert cluster.api is not None
    assert cluster.api.returncode == 0, cluster.log("api")
    assert first_answer < ANSWER_WITHIN
    assert read_answer < ANSWER_WITHIN
    assert ended.request_counts.succeeded == N
    assert results == {(f"before-{i}", "succeeded"): 1 for i in range(N)}
    assert after_ended.request_counts.succeeded == 5
    calls = upstream.all_calls()
    assert not any(key.startswith("during") for key in calls)  # refused means not stored
    assert max(calls.values()) == 1, calls.most_common(3)
    assert asyncio.run(pg_count_mismatches(db)) == []
    tally["store hangs survived: postgres SIGSTOP"] += 1
    tally["store hang, first 503 after (s)"] = round(first_answer, 2)
    tally["store hang, read 503 after (s)"] = round(read_answer, 2)
    tally["store hang, lasted (s)"] = round(hung_for, 2)
    tally["store hang, batch ended after (s)"] = round(recovery, 2)
