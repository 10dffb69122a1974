"""The fault suite's shared parts: the store each test runs on, the seeded randomness,
and the figures of the run (printed at the end, and written to ``BATCHD_FAULT_REPORT``)."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.invariants import count_mismatches, pg_count_mismatches
from tests.support.postgres import PostgresServer
from tests.support.upstream import FakeUpstream, serve_upstream

SEED_KEY = pytest.StashKey[int]()
Tally = defaultdict[str, float]
TALLY_KEY = pytest.StashKey[Tally]()


def rounds() -> int:
    """Kill rounds per store: a CI-sized default, more in ``make soak``."""
    return int(os.environ.get("BATCHD_FAULT_ROUNDS", "4"))


def pytest_configure(config: pytest.Config) -> None:
    seed = os.environ.get("BATCHD_FAULT_SEED")
    config.stash[SEED_KEY] = int(seed) if seed else random.SystemRandom().randrange(2**32)
    config.stash[TALLY_KEY] = defaultdict(float)


def pytest_report_header(config: pytest.Config) -> str:
    return f"fault suite seed: {config.stash[SEED_KEY]} (BATCHD_FAULT_SEED to repeat)"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    tally = config.stash[TALLY_KEY]
    if not tally:
        return
    seed = config.stash[SEED_KEY]
    terminalreporter.section("fault figures")
    terminalreporter.write_line(f"seed {seed} (BATCHD_FAULT_SEED={seed} repeats the run)")
    for name, value in sorted(tally.items()):
        terminalreporter.write_line(f"{name}: {value:g}")
    report = os.environ.get("BATCHD_FAULT_REPORT")
    if report:
        figures = {k: int(v) if v.is_integer() else v for k, v in sorted(tally.items())}
        Path(report).write_text(json.dumps({"seed": seed, **figures}, indent=1) + "\n")


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Tally:
    """Figures of this run by name (``kills/server/mid-batch``, ``upstream faults/reset`` ...)."""
    return request.config.stash[TALLY_KEY]


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """This test's randomness: the session seed and the test's id, so that one test repeats
    alone with the same seed."""
    return random.Random(f"{request.config.stash[SEED_KEY]}/{request.node.nodeid}")


@dataclass(frozen=True)
class Database:
    """A database for one test: its URL and how to check its counters against its rows."""

    kind: str
    url: str
    path: Path | None = None  # SQLite only

    def mismatches(self) -> list[str]:
        if self.path is not None:
            return count_mismatches(self.path)
        import asyncio

        return asyncio.run(pg_count_mismatches(self.url))


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, migrated database of each kind; its counters must agree with its rows at the end."""
    if request.param == "sqlite":
        path = tmp_path / "batchd.db"
        db = Database("sqlite", f"sqlite:///{path}", path)
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        db = Database("postgres", postgres.new_database_sync())
    yield db
    if db.path is None or db.path.exists():
        assert db.mismatches() == []


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(latency=0.05) as running:
        yield running


@pytest.fixture
def cluster(tmp_path: Path, database: Database, upstream: FakeUpstream) -> Iterator[Cluster]:
    """``batchd serve`` with its engine and one ``batchd worker``, a few slots each (the
    kill rounds of both faces)."""
    running = Cluster(tmp_path, database.url, upstream.url, concurrency=8)
    try:
        running.start_api(engine=True)
        running.start_workers(1)
        yield running
    finally:
        running.stop()
