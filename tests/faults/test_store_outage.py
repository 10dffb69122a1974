"""The database goes away for a while under a running ``batchd serve``.

SQLite locked by another process, SQLite on a full disk (the server's file-size limit
lowered to one byte with prlimit: every write past it fails with EFBIG, as on a full disk),
PostgreSQL stopped, PostgreSQL hung (SIGSTOP: it answers nothing and accepts no one, though
the kernel still completes TCP handshakes; the store's timeouts end each call). While it
lasts the API answers 503 in the error envelope with ``retry-after``, never a bare 500 and
never a hang; the batch accepted before the outage is not lost, and processing resumes by
itself afterwards, each result written once.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import wait_ended
from tests.faults.conftest import Tally
from tests.support.cluster import Cluster
from tests.support.invariants import count_mismatches, pg_count_mismatches
from tests.support.postgres import PostgresServer, ephemeral_postgres
from tests.support.upstream import FakeUpstream, serve_upstream

HANG = 60.0  # seconds: no API answer and no batch may take longer
OUTAGE = 1.0  # seconds the database stays away after the first refused write
N = 120
CONNECT, STATEMENT = 2.0, 2.0  # the PostgreSQL store's timeouts in these tests, seconds
TIMEOUTS = {
    "BATCHD_DB_CONNECT_TIMEOUT_SECONDS": str(CONNECT),
    "BATCHD_DB_STATEMENT_TIMEOUT_SECONDS": str(STATEMENT),
}

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


class Outage(Protocol):
    kind: str
    db: str
    answer_within: float  # seconds: the first API call during the outage is answered by then

    def begin(self, cluster: Cluster) -> None: ...

    def end(self) -> None: ...

    def mismatches(self) -> list[str]: ...


class SQLiteLocked:
    """Another process holds an exclusive lock on the database file."""

    kind = "sqlite locked"
    answer_within = HANG

    def __init__(self, folder: Path) -> None:
        self.path = folder / "batchd.db"
        self.db = f"sqlite:///{self.path}"
        self._locker: subprocess.Popen[str] | None = None

    def begin(self, cluster: Cluster) -> None:  # noqa: ARG002
        self._locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._locker.stdout is not None
        assert self._locker.stdout.readline() == "locked\n"

    def end(self) -> None:
        assert self._locker is not None
        assert self._locker.stdin is not None
        self._locker.stdin.write("\n")
        self._locker.stdin.close()
        assert self._locker.wait(timeout=30) == 0
        assert self._locker.stdout is not None
        self._locker.stdout.close()

    def mismatches(self) -> list[str]:
        return count_mismatches(self.path)


class SQLiteDiskFull(SQLiteLocked):
    """No write of the server's may reach past the first byte of any file."""

    kind = "sqlite disk full"

    def begin(self, cluster: Cluster) -> None:
        assert cluster.api is not None
        self._pid = cluster.api.pid
        _, hard = resource.prlimit(self._pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self._pid, resource.RLIMIT_FSIZE, (1, hard))

    def end(self) -> None:
        _, hard = resource.prlimit(self._pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self._pid, resource.RLIMIT_FSIZE, (hard, hard))


class PostgresStopped:
    """A PostgreSQL server of the test's own, stopped (``pg_ctl stop -m fast``) and started."""

    kind = "postgres stopped"
    answer_within = HANG

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.db = server.new_database_sync()

    def begin(self, cluster: Cluster) -> None:  # noqa: ARG002
        self.server.stop("fast")

    def end(self) -> None:
        self.server.start()

    def mismatches(self) -> list[str]:
        import asyncio

        return asyncio.run(pg_count_mismatches(self.db))


class PostgresHung(PostgresStopped):
    """The same server stopped with SIGSTOP, every process of it, then SIGCONT."""

    kind = "postgres hung"
    answer_within = CONNECT + STATEMENT + 2.0  # a statement's timeout, then its rollback's

    def begin(self, cluster: Cluster) -> None:  # noqa: ARG002
        self.server.pause()

    def end(self) -> None:
        self.server.resume()


@pytest.fixture(params=["sqlite locked", "sqlite disk full", "postgres stopped", "postgres hung"])
def outage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outage]:
    if request.param.startswith("postgres"):
        with ephemeral_postgres() as server:
            try:
                yield (PostgresHung if request.param == "postgres hung" else PostgresStopped)(
                    server
                )
            finally:
                server.resume()  # never leave a stopped server behind
    elif request.param == "sqlite locked":
        yield SQLiteLocked(tmp_path)
    else:
        yield SQLiteDiskFull(tmp_path)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.1) as running:
        yield running


@pytest.fixture
def cluster(tmp_path: Path, outage: Outage, upstream: FakeUpstream) -> Iterator[Cluster]:
    running = Cluster(tmp_path, outage.db, upstream.url, concurrency=8, env=TIMEOUTS)
    try:
        running.start_api(engine=True)
        yield running
    finally:
        running.stop()


def batch_body(prefix: str, n: int) -> dict[str, Any]:
    return {
        "requests": [
            {
                "custom_id": f"{prefix}-{i}",
                "params": {
                    "model": "claude-outage",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{prefix}-{i}"}],
                },
            }
            for i in range(n)
        ]
    }


def assert_unavailable(response: httpx.Response) -> None:
    """503 in the API's error envelope, with retry-after and a request id."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["type"] == "error", body
    assert body["error"]["type"] in ("api_error", "overloaded_error"), body
    assert body["error"]["message"], body
    assert float(response.headers["retry-after"]) > 0
    assert response.headers["request-id"].startswith("req_")


def test_the_api_answers_503_while_the_database_is_away_and_work_resumes(
    outage: Outage, cluster: Cluster, upstream: FakeUpstream, tally: Tally
) -> None:
    http = httpx.Client(base_url=cluster.url, headers={"x-api-key": "sk-test"}, timeout=HANG)
    client = anthropic.Anthropic(base_url=cluster.url, api_key="sk-test", max_retries=0)
    with http, client:
        accepted = http.post("/v1/messages/batches", json=batch_body("before", N))
        assert accepted.status_code == 200, accepted.text
        batch_id = accepted.json()["id"]
        deadline = time.monotonic() + HANG
        while client.messages.batches.retrieve(batch_id).request_counts.succeeded < 10:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        outage.begin(cluster)
        began = time.monotonic()
        assert_unavailable(http.post("/v1/messages/batches", json=batch_body("during", 5)))
        first_answer = time.monotonic() - began
        time.sleep(OUTAGE)  # the outage lasts; the engine keeps failing to write meanwhile
        read = http.get(f"/v1/messages/batches/{batch_id}")
        if read.status_code != 200:  # SQLite still serves reads while writes are refused
            assert_unavailable(read)
        again = time.monotonic()
        assert_unavailable(http.post("/v1/messages/batches", json=batch_body("during", 5)))
        second_answer = time.monotonic() - again
        outage.end()
        ended_outage = time.monotonic()

        ended = wait_ended(client, batch_id, timeout=HANG)
        recovery = time.monotonic() - ended_outage
        results = Counter(
            (r.custom_id, r.result.type) for r in client.messages.batches.results(batch_id)
        )
        after = client.messages.batches.create(requests=batch_body("after", 5)["requests"])
        after_ended = wait_ended(client, after.id, timeout=HANG)

    assert cluster.api is not None
    assert cluster.api.poll() is None, cluster.log("api")
    assert ended.request_counts.succeeded == N
    assert results == {(f"before-{i}", "succeeded"): 1 for i in range(N)}
    assert after_ended.request_counts.succeeded == 5
    calls = upstream.all_calls()
    assert not any(key.startswith("during") for key in calls)  # refused means not stored
    # Results finished while the store was away waited in memory and were written after:
    # nothing had to run again.
    assert max(calls.values()) == 1, calls.most_common(3)
    assert outage.mismatches() == []
    assert first_answer < outage.answer_within
    if not isinstance(outage, SQLiteDiskFull):  # (whose log could not be written either)
        assert "will retry" in cluster.log("api")  # the engine backed off, and went on
    tally[f"store outages survived: {outage.kind}"] += 1
    tally[f"store outage, first 503 after (s): {outage.kind}"] = round(first_answer, 2)
    tally[f"store outage, next 503 after (s): {outage.kind}"] = round(second_answer, 2)
    tally[f"store outage, batch ended after (s): {outage.kind}"] = round(recovery, 2)


def test_a_worker_stops_on_sigterm_while_postgres_is_away_and_its_work_runs_again(
    tmp_path: Path, upstream: FakeUpstream, tally: Tally
) -> None:
    with ephemeral_postgres() as server:
        db = server.new_database_sync()
        cluster = Cluster(tmp_path, db, upstream.url, concurrency=8)
        try:
            cluster.start_api()
            cluster.start_workers(1)
            with anthropic.Anthropic(base_url=cluster.url, api_key="sk-test") as client:
                batch = client.messages.batches.create(requests=batch_body("w", 40)["requests"])
                deadline = time.monotonic() + HANG
                while client.messages.batches.retrieve(batch.id).request_counts.succeeded < 10:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                server.stop("fast")
                worker = cluster.workers[0]
                worker.send_signal(signal.SIGTERM)
                # It gives up on the results it cannot write (a grace of 5 s), not hangs.
                assert worker.wait(timeout=HANG) == 0, cluster.log("worker0")
                server.start()
                cluster.restart_worker(0)
                ended = wait_ended(client, batch.id, timeout=HANG)
                results = Counter(r.custom_id for r in client.messages.batches.results(batch.id))
        finally:
            cluster.stop()
        assert ended.request_counts.succeeded == 40
        assert results == {f"w-{i}": 1 for i in range(40)}
        assert "results unwritten" in cluster.log("worker0")
        tally["workers stopped while the store was away"] += 1
