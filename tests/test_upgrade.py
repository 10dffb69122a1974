"""Upgrades: a database written by the previous release opens under this code and keeps
serving its batches.

The previous release's code is taken from git (``git archive PREVIOUS src``) and run as
``batchd serve`` in a child process with that tree first on ``PYTHONPATH``: it creates
batches that end (succeeded and errored results), batches left unfinished (its engine off)
and one left canceling. Then this code migrates the database (``batchd migrate``) and serves
it: every batch, count and result reads back as the previous release answered it, and the
unfinished batches finish. On SQLite and on PostgreSQL. Later schema changes keep this
test as it is: it checks what the previous release wrote, whatever migrations follow.
"""

from __future__ import annotations

import asyncio
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import anthropic
import pytest
from bench.harness import SQLITE_FILE, batchd

from tests.conftest import mock_request, wait_ended
from tests.support.cluster import run_batchd
from tests.support.invariants import count_mismatches, pg_count_mismatches
from tests.support.postgres import PostgresServer
from tests.support.server import make_settings, serve_batchd

PREVIOUS = "f0417e3"  # the last landing on main before migration 0004 (the upgrade tested)
REPO = Path(__file__).resolve().parents[1]
QUICK = {"BATCHD_POLL_INTERVAL_SECONDS": "0.05", "BATCHD_SWEEP_INTERVAL_SECONDS": "0.1"}


@pytest.fixture(scope="module")
def previous_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``src`` folder, from git."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS, "src"],
        capture_output=True,
        check=True,
    ).stdout
    folder = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


@dataclass(frozen=True)
class Database:
    url: str | None  # PostgreSQL; None: the SQLite file of bench.harness.batchd
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / SQLITE_FILE

    @property
    def db(self) -> str:
        return self.url or f"sqlite:///{self.path}"

    def mismatches(self) -> list[str]:
        if self.url is None:
            return count_mismatches(self.path)
        return asyncio.run(pg_count_mismatches(self.url))


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        return Database(None, tmp_path)
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return Database(postgres.new_database_sync(migrated=False), tmp_path)


@contextmanager
def previous_batchd(src: Path, database: Database, *, engine: bool) -> Iterator[str]:
    """The previous release's ``batchd serve`` on the database (PostgreSQL migrated by its
    ``batchd migrate`` first); its URL."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(src))
        for name, value in QUICK.items():
            env.setenv(name, value)
        with batchd(database.folder, engine=engine, database=database.url) as process:
            yield process.url


def _requests(prefix: str, n: int) -> list[Any]:
    requests = [mock_request(f"{prefix}-{i}", f"{prefix} {i}") for i in range(n)]
    requests.append(mock_request(f"{prefix}-bad", model="no-such-model"))  # errored at once
    return requests


def _snapshot(client: anthropic.Anthropic) -> dict[str, dict[str, Any]]:
    """Every batch as the API answers it (but its results_url, which names the server),
    and the results of those that ended."""
    seen = {}
    for batch in client.messages.batches.list(limit=100):
        wire = batch.model_dump(exclude={"results_url"})
        if batch.processing_status == "ended":
            results = client.messages.batches.results(batch.id)
            wire["results"] = sorted(
                (r.to_json() for r in results), key=lambda line: line.split('"custom_id"')[1]
            )
        seen[batch.id] = wire
    return seen


def test_a_database_of_the_previous_release_migrates_and_keeps_serving(
    previous_src: Path, database: Database
) -> None:
    with (
        previous_batchd(previous_src, database, engine=True) as url,
        anthropic.Anthropic(base_url=url, api_key="sk-test") as client,
    ):
        for name in ("done1", "done2"):
            batch = client.messages.batches.create(requests=_requests(name, 20))
            wait_ended(client, batch.id)
    with (
        previous_batchd(previous_src, database, engine=False) as url,
        anthropic.Anthropic(base_url=url, api_key="sk-test") as client,
    ):
        waiting = client.messages.batches.create(requests=_requests("waiting", 30))
        canceling = client.messages.batches.create(requests=_requests("canceling", 10))
        client.messages.batches.cancel(canceling.id)
        before = _snapshot(client)
    assert {b["processing_status"] for b in before.values()} == {
        "ended",
        "in_progress",
        "canceling",
    }

    done = run_batchd("migrate", "--db", database.db)
    assert done.returncode == 0, done.stderr
    settings = make_settings("unused", db=database.db)
    with (
        serve_batchd(settings) as server,
        anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client,
    ):
        unchanged = _snapshot(client)
        ended = {b: wait_ended(client, b) for b in (waiting.id, canceling.id)}
        results = {
            b: Counter((r.custom_id, r.result.type) for r in client.messages.batches.results(b))
            for b in ended
        }

    finished = {k: v for k, v in before.items() if v["processing_status"] == "ended"}
    assert len(finished) == 2
    # Each field the previous release answered (an extension added since may add more).
    assert {k: {f: unchanged[k].get(f) for f in v} for k, v in finished.items()} == finished
    for batch_id, wire in before.items():  # unfinished ones: the same but for their status
        assert unchanged[batch_id]["id"] == wire["id"]
        assert unchanged[batch_id]["created_at"] == wire["created_at"]
    assert ended[waiting.id].request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 30,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert results[waiting.id] == Counter(
        {(f"waiting-{i}", "succeeded"): 1 for i in range(30)} | {("waiting-bad", "errored"): 1}
    )
    assert results[canceling.id] == Counter(
        {(f"canceling-{i}", "canceled"): 1 for i in range(10)} | {("canceling-bad", "errored"): 1}
    )
    assert database.mismatches() == []
