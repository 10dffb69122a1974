"""python -m bench [--smoke | --full] [--only NAME ...] [--repeat N] [--json PATH]

Runs each scenario beside its baseline, prints a table of medians and ratios per scenario,
and writes every figure as JSON (bench/results/latest.json by default) to compare commits.
The pg_ scenarios run on one ephemeral PostgreSQL server, started only when one is chosen.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tests.support.postgres import find_bin

from bench import local, openai, pacing, postgres, scenarios, vllm

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "ingest": [200],
        "ingest_mib": 8,
        "engine": [500],
        "fanout": [8],
        "latency": 0.05,
        "results": [500],
        "lookups": [100],
        "calls": 50,
        "reuse": [50],
        "local": {
            "prompts": 16,
            "new_tokens": 8,
            "batch_size": 8,
            "system": 100,
            "single": 4,
            "mixed_max": 32,
            "prefixes": 4,
            "cache_prefixes": 1,
            "tools": 8,
            "embed_inputs": 64,
            "embed_per_request": 8,
            "embed_clients": 2,
        },
        "openai_file": (200, 1),  # lines, MiB
        "openai_embeddings": 500,
        "pacing": {
            "capped": 48,
            "rpm": 60,
            "rpm_budget": 1200,
            "queueing": 64,
            "fleet": 30,
            "fleet_budget": 1200,
            "fleet_cap": 48,
            "interactive": 3,
        },
        "repeat": 1,
    },
    "default": {
        "ingest": [1_000, 10_000, 100_000],
        "ingest_mib": 200,
        "engine": [20_000],
        "fanout": [64, 256, 1_024],
        "latency": 0.2,
        "results": [20_000],
        "lookups": [100, 10_000],
        "calls": 300,
        "reuse": [10_000],
        "local": {
            "prompts": 256,
            "new_tokens": 32,
            "batch_size": 64,
            "system": 300,
            "single": 32,
            "mixed_max": 256,
            "prefixes": 8,
            "cache_prefixes": 2,
            "tools": 64,
            "embed_inputs": 2_048,
            "embed_per_request": 64,
            "embed_clients": 4,
        },
        "openai_file": (50_000, 200),
        "openai_embeddings": 100_000,
        "pacing": {
            "capped": 1_600,
            "rpm": 1_500,
            "rpm_budget": 3_000,
            "queueing": 1_600,
            "fleet": 600,
            "fleet_budget": 1_200,
            "fleet_cap": 800,
            "interactive": 100,
        },
        "repeat": 3,
    },
    "full": {
        "ingest": [1_000, 10_000, 100_000],
        "ingest_mib": 200,
        "engine": [100_000],
        "fanout": [64, 256, 1_024],
        "latency": 0.2,
        "results": [100_000],
        "lookups": [100, 10_000],
        "calls": 1_000,
        "reuse": [10_000],
        "local": {
            "prompts": 1024,
            "new_tokens": 32,
            "batch_size": 64,
            "system": 300,
            "single": 64,
            "mixed_max": 256,
            "prefixes": 16,
            "cache_prefixes": 4,
            "tools": 256,
            "embed_inputs": 8_192,
            "embed_per_request": 64,
            "embed_clients": 4,
        },
        "openai_file": (50_000, 200),
        "openai_embeddings": 100_000,
        "pacing": {
            "capped": 3_200,
            "rpm": 3_000,
            "rpm_budget": 3_000,
            "queueing": 3_200,
            "fleet": 1_200,
            "fleet_budget": 1_200,
            "fleet_cap": 1_600,
            "interactive": 300,
        },
        "repeat": 3,
    },
}


def plan(
    size: dict[str, Any], repeat: int, workdir: Path, databases: postgres.Databases
) -> dict[str, Callable[[], Any]]:
    return {
        "ingest": lambda: scenarios.ingest(
            size["ingest"], repeat, workdir, padded_mib=size["ingest_mib"]
        ),
        "engine": lambda: scenarios.engine(size["engine"], repeat, workdir),
        "fanout": lambda: scenarios.fanout(size["fanout"], repeat, workdir, size["latency"]),
        "results": lambda: scenarios.results(size["results"], repeat, workdir),
        "lookups": lambda: scenarios.lookups(size["lookups"], size["calls"], workdir),
        "reuse": lambda: scenarios.reuse(size["reuse"], repeat, workdir, size["latency"]),
        "pg_ingest": lambda: postgres.ingest(size["ingest"], repeat, workdir, databases),
        "pg_engine": lambda: postgres.engine(size["engine"], repeat, workdir, databases),
        "pg_results": lambda: postgres.results(size["results"], repeat, workdir, databases),
        "local": lambda: local.local(size["local"], repeat, workdir),
        "pacing": lambda: pacing.pacing(size["pacing"], workdir, databases),
        "vllm": lambda: vllm.vllm(size["local"], repeat, workdir),
        "openai_ingest": lambda: openai.ingest(
            size["openai_file"][0], size["openai_file"][1], repeat, workdir
        ),
        "openai_embeddings": lambda: openai.embeddings(size["openai_embeddings"], repeat, workdir),
    }


NAMES = [
    "ingest",
    "engine",
    "fanout",
    "results",
    "lookups",
    "reuse",
    "pg_ingest",
    "pg_engine",
    "pg_results",
    "local",
    "pacing",
    "vllm",
    "openai_ingest",
    "openai_embeddings",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="tiny sizes: checks it still runs")
    group.add_argument("--full", action="store_true", help="100,000-request engine and results")
    parser.add_argument("--only", nargs="+", choices=NAMES)
    parser.add_argument("--repeat", type=int, help="runs per figure (median taken)")
    parser.add_argument("--levels", type=int, nargs="+", help="fan-out concurrency levels")
    parser.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    args = parser.parse_args(argv)
    kind = "smoke" if args.smoke else "full" if args.full else "default"
    size = dict(SIZES[kind])
    if args.levels:
        size["fanout"] = args.levels
    repeat = args.repeat or size["repeat"]
    console = Console()
    report: dict[str, Any] = {
        "size": kind,
        "repeat": repeat,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": {},
    }
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="batchd-bench-"))
        databases = postgres.Databases(stack)
        for name, run in plan(size, repeat, Path(tmp), databases).items():
            if args.only and name not in args.only:
                continue
            if name.startswith("pg_") and not args.only and find_bin() is None:
                console.print(f"{name} skipped: no PostgreSQL server installed")
                continue
            if name == "vllm" and not args.only and not vllm.installed():
                console.print(f"{name} skipped: vllm is not installed (GPU machines)")
                continue
            started = time.perf_counter()
            rows = run()
            report["scenarios"][name] = rows
            console.print(_table(name, rows, time.perf_counter() - started))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"figures written to {args.json}")
    return 0


def _table(name: str, rows: list[dict[str, Any]], seconds: float) -> Table:
    table = Table(title=f"{name} ({seconds:.0f} s)", title_justify="left")
    columns = list(dict.fromkeys(column for row in rows for column in row))
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    return table


if __name__ == "__main__":
    sys.exit(main())
