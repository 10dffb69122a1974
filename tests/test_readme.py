"""The README's SDK example runs as written against a live server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.server import RunningServer

README = Path(__file__).parent.parent / "README.md"


def test_readme_example_runs(server: RunningServer) -> None:
    [example, _] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert 'base_url="http://127.0.0.1:8000"' in example
    code = example.replace("http://127.0.0.1:8000", server.url)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n") == ["q0 succeeded", "q1 succeeded", "q2 succeeded", ""]


def test_readme_openai_example_runs(server: RunningServer) -> None:
    [_, example] = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert 'base_url="http://127.0.0.1:8000/v1"' in example
    code = example.replace("http://127.0.0.1:8000", server.url)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n") == ["q0 completed", "q1 completed", "q2 completed", ""]
