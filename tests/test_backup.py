"""Online backup: ``batchd db backup PATH`` copies a live SQLite database (SQLite's backup
API, one read transaction) while its server runs batches; the copy is one consistent state
that a server started on it finishes. PostgreSQL has pg_dump instead (README)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import anthropic

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.cluster import run_batchd
from tests.support.invariants import count_mismatches
from tests.support.postgres import PostgresServer
from tests.support.upstream import FakeUpstream, backend_of

N = 60


def test_a_backup_taken_while_a_batch_runs_is_consistent_and_finishes_its_batch(
    start_server: StartServer, held: FakeUpstream, tmp_path: Path
) -> None:
    backend = backend_of(held, max_concurrency=4, adaptive_concurrency=False)
    live = start_server(backends=[backend])
    copy = tmp_path / "copy" / "batchd.db"
    copy.parent.mkdir()
    with anthropic.Anthropic(base_url=live.url, api_key="sk-test") as client:
        requests = [mock_request(f"r{i}", f"r{i}", model="claude-x") for i in range(N)]
        batch = client.messages.batches.create(requests=requests)
        held.release(10)
        wait_until(
            lambda: client.messages.batches.retrieve(batch.id).request_counts.succeeded == 10,
            "the batch did not start",
        )
        held.release(30)  # results are written while the copy is taken
        done = run_batchd("db", "backup", str(copy), "--db", f"sqlite:///{tmp_path / 'batchd.db'}")
        assert done.returncode == 0, done.stderr
        held.release()
        assert wait_ended(client, batch.id).request_counts.succeeded == N

    with closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        [[copied_batches]] = db.execute("SELECT count(*) FROM batches")
    assert copied_batches == 1
    assert count_mismatches(copy) == []
    assert not copy.with_name("batchd.db.partial").exists()
    assert copy.stat().st_mode & 0o777 == 0o600

    restored = start_server(db_path=copy, backends=[backend], lease_seconds=0.5)
    with anthropic.Anthropic(base_url=restored.url, api_key="sk-test") as client:
        ended = wait_ended(client, batch.id)
        results = Counter(r.custom_id for r in client.messages.batches.results(batch.id))
    assert ended.request_counts.succeeded == N
    assert results == {f"r{i}": 1 for i in range(N)}


def test_a_backup_refuses_to_overwrite_its_own_database(tmp_path: Path) -> None:
    db = tmp_path / "batchd.db"
    done = run_batchd("db", "backup", str(db), "--db", f"sqlite:///{db}")

    assert done.returncode != 0
    assert "must not overwrite the database itself" in done.stderr
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_postgres_points_to_pg_dump(postgres: PostgresServer, tmp_path: Path) -> None:
    target = tmp_path / "never-written.db"
    done = run_batchd("db", "backup", str(target), "--db", postgres.new_database_sync())

    assert done.returncode != 0
    assert "pg_dump" in done.stderr
    assert not target.exists()
