"""The benchmark still runs (at its smoke size); its timings are not judged here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.__main__ import NAMES

from tests.support.postgres import find_bin

ROOT = Path(__file__).parent.parent


@pytest.mark.timeout(330)  # the bench's own run may take its 300 s (subprocess timeout)
def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    assert set(report["scenarios"]) == set(NAMES) - _skipped_without_postgres() - _no_vllm()
    for name, rows in report["scenarios"].items():
        assert rows, name
        figures = [v for row in rows for v in row.values() if not isinstance(v, str)]  # not labels
        assert all(value > 0 for value in figures), (name, rows)


def _no_vllm() -> set[str]:
    """The vllm scenario, where vllm is not installed (it needs a GPU machine)."""
    return set() if importlib.util.find_spec("vllm") else {"vllm"}


def _skipped_without_postgres() -> set[str]:
    """The pg_ scenarios, where no server is installed (never in CI, which installs one)."""
    if find_bin() is not None or os.environ.get("CI") == "true":
        return set()
    return {name for name in NAMES if name.startswith("pg_")}
