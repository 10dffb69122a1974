"""Throughput of 1 vs 3 `batchd worker` processes on one PostgreSQL, in one run.

python -m bench.workers [--requests N] [--latency SECONDS] [--concurrency C]

Each round starts a fresh database, one API process (`serve --no-engine`) and the workers,
submits one batch to the fake upstream of the tests (fixed latency), and times it from
creation to `ended`. Prints requests/s per round and the ratio; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anthropic
from anthropic.types.messages.batch_create_params import Request
from rich.console import Console
from tests.support.cluster import Cluster, run_batchd
from tests.support.postgres import PostgresServer, ephemeral_postgres
from tests.support.upstream import serve_upstream


def one_round(
    postgres: PostgresServer, upstream_url: str, workers: int, n: int, concurrency: int
) -> float:
    db = postgres.new_database_sync(migrated=False)
    run_batchd("migrate", "--db", db).check_returncode()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), db, upstream_url, concurrency=concurrency)
        try:
            cluster.start_api()
            cluster.start_workers(workers)
            time.sleep(1.0)  # the workers are up and listening
            with anthropic.Anthropic(base_url=cluster.url, api_key="k", max_retries=0) as client:
                requests: list[Request] = [
                    {
                        "custom_id": f"r{i}",
                        "params": {
                            "model": "claude-bench",
                            "max_tokens": 16,
                            "messages": [{"role": "user", "content": f"w{workers} {i}"}],
                        },
                    }
                    for i in range(n)
                ]
                batch = client.messages.batches.create(requests=requests)
                start = time.monotonic()
                while client.messages.batches.retrieve(batch.id).processing_status != "ended":
                    time.sleep(0.02)
                return n / (time.monotonic() - start)
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=32, help="per worker")
    args = parser.parse_args()
    with ephemeral_postgres() as postgres, serve_upstream(latency=args.latency) as upstream:
        rates = {
            w: one_round(postgres, upstream.url, w, args.requests, args.concurrency) for w in (1, 3)
        }
    console = Console()
    for workers, rate in rates.items():
        console.print(f"{workers} worker(s): {rate:,.0f} requests/s")
    console.print(f"3 workers / 1 worker: {rates[3] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
