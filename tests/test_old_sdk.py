"""The 0.x SDK (x-api-key, API version 2023-06-01, beta paths with ?beta=true) works unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import RunningServer

ROOT = Path(__file__).parent.parent
OLD_SDK = ROOT / ".venv" / "sdk-0.75"
SCRIPT = Path(__file__).parent / "support" / "old_sdk_client.py"


def test_old_sdk_runs_the_whole_workflow(server: RunningServer) -> None:
    assert (OLD_SDK / "anthropic").is_dir(), f"{OLD_SDK} is missing: run `make install`"
    env = {**os.environ, "PYTHONPATH": str(OLD_SDK)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), server.url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
        check=True,
    )
    summary = json.loads(done.stdout)
    expected_results = [["r0", "succeeded"], ["r1", "succeeded"], ["r2", "succeeded"]]
    assert summary["version"] == "0.75.0"
    for namespace in ("messages", "beta"):
        assert summary[namespace] == {
            "results": expected_results,
            "listed": True,
            "deleted": "message_batch_deleted",
        }
    assert summary["not_found"] == "not_found_error"
    assert summary["message"] == "Mock reply: hi"
