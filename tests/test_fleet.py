"""One budget for a fleet: three `batchd worker` processes on one PostgreSQL database keep
one upstream's requests-per-minute budget together (backends/fleet.py)."""

from __future__ import annotations

from pathlib import Path

import anthropic
from anthropic.types.messages.batch_create_params import Request

from tests.conftest import wait_ended
from tests.support.budget import RequestBudget
from tests.support.cluster import Cluster, backend_table, run_batchd
from tests.support.postgres import PostgresServer
from tests.support.upstream import serve_upstream

N = 360


def _requests() -> list[Request]:
    return [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "claude-fleet",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"fleet prompt {i}"}],
            },
        }
        for i in range(N)
    ]


def test_three_workers_keep_one_requests_per_minute_budget(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    # 20 requests a second, 200 at once, and no headers to read it from: only the
    # configured budget, shared through the database, keeps three workers within it.
    budget = RequestBudget(1200, burst_seconds=10, style="none")
    with serve_upstream(budget=budget) as upstream:
        db = postgres.new_database_sync(migrated=False)
        migrated = run_batchd("migrate", "--db", db)
        assert migrated.returncode == 0, migrated.stderr
        cluster = Cluster(tmp_path, db, upstream.url)
        cluster.config.write_text(
            backend_table(
                upstream.url, max_concurrency=16, requests_per_minute=1200, max_retries=20
            )
        )
        try:
            cluster.start_api()
            cluster.start_workers(3)
            with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
                batch = client.messages.batches.create(requests=_requests())
                ended = wait_ended(client, batch.id, timeout=90)
        finally:
            cluster.stop()
    assert ended.request_counts.succeeded == N
    assert budget.refused <= N // 100, budget.refused  # at most 1%, not 2 of every 3
    assert upstream.admitted == N
