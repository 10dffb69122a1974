"""Real OpenAI-compatible model servers, started as a user would, to put behind batchd.

Fakes are written by us; real servers have quirks that fakes do not. ``transformers serve``
(Hugging Face's own server, installed with transformers) serves the tiny model on the CPU:
it pins itself to that one model directory, which is then the ``upstream_model``. It places
its model with ``accelerate`` (a test dependency); where that is missing its tests are
skipped, except in CI (``CI=true``), where that fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cluster import free_port, wait_until_serving


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"transformers serve needs {package} (pip install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: in CI the real-server tests must run", pytrace=False)
        pytest.skip(message)


@contextmanager
def serve_transformers(model_dir: Path, log: Path) -> Iterator[str]:
    """``transformers serve MODEL_DIR`` on a loopback port until the block exits; yields its
    origin once ``GET /health`` answers."""
    _require("accelerate", "accelerate")
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("transformers")),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    # One torch thread: with more on 2 shared cores a batch ran 10x slower.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:  # it loads torch and the model first: slow on 2 shared cores
        wait_until_serving(f"{url}/health", process, log.read_text, timeout=110)
        yield url
    finally:
        process.kill()  # nothing of it is kept
        process.wait()
