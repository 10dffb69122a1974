"""Real OpenAI-compatible model servers, started as a user would, to put behind batchd.

Fakes are written by us; real servers have quirks that fakes do not. ``transformers serve``
(Hugging Face's own server, installed with transformers) serves the tiny model on the CPU:
it pins itself to that one model directory, which is then the ``upstream_model``. It places
its model with ``accelerate`` (a test dependency); where that is missing its tests are
skipped, except in CI (``CI=true``), where that fails the run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.cluster import free_port


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"transformers serve needs {package} (pip install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: in CI the real-server tests must run", pytrace=False)
        pytest.skip(message)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def serve_transformers(model_dir: Path, log: Path) -> Iterator[str]:
    """``transformers serve MODEL_DIR`` on a loopback port until the block exits; yields its
    origin once ``GET /health`` answers (the test's timeout bounds the wait)."""
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
    try:
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)  # returns early only if it dies
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
