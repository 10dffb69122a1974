"""Upgrades: a database written by the previous release opens under this code and keeps
serving its batches.

The previous release's databases are fixtures (tests/fixtures/upgrade, built from git by
``python -m tests.fixtures.upgrade.build``, which says how): two batches that ended
(succeeded and errored results), one left unfinished (its engine off) and one left
canceling, with what that release answered for each. This code migrates a copy (``batchd
migrate``) and serves it: every batch, count and result reads back as the previous release
answered it, and the unfinished batches finish. On SQLite and on PostgreSQL. Later schema
changes keep this test as it is: it checks what the previous release wrote, whatever
migrations follow.

The server runs on a clock that starts when the previous release's answers were recorded
(``recorded_at``) and runs at the real pace, as if the upgrade came right after: the
fixtures' rows stay as that release wrote them, and however long after their making the
test runs, no batch has expired (24 hours) or passed retention (archived, purged).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchd.runtime import Clock
from tests.conftest import wait_ended
from tests.fixtures.upgrade.build import CANCELING, WAITING, load_database, snapshot
from tests.support.cluster import run_batchd
from tests.support.invariants import count_mismatches, pg_count_mismatches
from tests.support.postgres import PostgresServer
from tests.support.server import make_settings, serve_batchd


@dataclass(frozen=True)
class Database:
    db: str  # its URL
    path: Path | None  # SQLite: the file
    recorded: dict[str, Any]  # what the previous release answered (tests.fixtures.upgrade)

    def mismatches(self) -> list[str]:
        if self.path is not None:
            return count_mismatches(self.path)
        return asyncio.run(pg_count_mismatches(self.db))


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A copy of the previous release's database."""
    if request.param == "sqlite":
        path = tmp_path / "previous.db"
        return Database(f"sqlite:///{path}", path, load_database("sqlite", path))
    postgres: PostgresServer = request.getfixturevalue("postgres")
    url = postgres.new_database_sync(migrated=False)
    return Database(url, None, load_database("postgres", url))


def resumed_clock(start: float) -> Clock:
    """A clock that reads ``start`` now and runs at the real pace from there."""
    origin = time.monotonic()
    return lambda: start + (time.monotonic() - origin)


def test_a_database_of_the_previous_release_migrates_and_keeps_serving(
    database: Database,
) -> None:
    before: dict[str, dict[str, Any]] = database.recorded["batches"]
    waiting, canceling = database.recorded["waiting"], database.recorded["canceling"]
    assert sorted(b["processing_status"] for b in before.values()) == [
        "canceling",
        "ended",
        "ended",
        "in_progress",
    ]

    done = run_batchd("migrate", "--db", database.db)
    assert done.returncode == 0, done.stderr
    settings = make_settings("unused", db=database.db)
    clock = resumed_clock(database.recorded["recorded_at"])
    with (
        serve_batchd(settings, clock=clock) as server,
        anthropic.Anthropic(base_url=server.url, api_key="sk-test") as client,
    ):
        unchanged = snapshot(client)
        ended = {b: wait_ended(client, b) for b in (waiting, canceling)}
        results = {
            b: Counter((r.custom_id, r.result.type) for r in client.messages.batches.results(b))
            for b in ended
        }

    assert unchanged.keys() == before.keys()
    finished = {k: v for k, v in before.items() if v["processing_status"] == "ended"}
    assert len(finished) == 2
    # Each field the previous release answered (an extension added since may add more).
    assert {k: {f: unchanged[k].get(f) for f in v} for k, v in finished.items()} == finished
    for batch_id, wire in before.items():  # unfinished ones: the same but for their status
        assert unchanged[batch_id]["id"] == wire["id"]
        assert unchanged[batch_id]["created_at"] == wire["created_at"]
        assert unchanged[batch_id]["expires_at"] == wire["expires_at"]
    assert ended[waiting].request_counts.model_dump() == {
        "processing": 0,
        "succeeded": WAITING,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    assert results[waiting] == Counter(
        {(f"waiting-{i}", "succeeded"): 1 for i in range(WAITING)} | {("waiting-bad", "errored"): 1}
    )
    assert results[canceling] == Counter(
        {(f"canceling-{i}", "canceled"): 1 for i in range(CANCELING)}
        | {("canceling-bad", "errored"): 1}
    )
    assert database.mismatches() == []
