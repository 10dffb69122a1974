"""The README's snippets of batchd's own extensions run as written against a live server."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import anthropic
import openai

from tests.conftest import mock_request, wait_ended
from tests.support.server import RunningServer

README = Path(__file__).parent.parent / "README.md"


def _snippets() -> list[str]:
    section = README.read_text().split("## Beyond the hosted API")[1].split("\n## ")[0]
    return re.findall(r"```py\n(.*?)```", section, re.S)


def test_the_extension_snippets_run(server: RunningServer) -> None:
    snippets = _snippets()
    assert len(snippets) == 3
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        requests = [mock_request("ok"), mock_request("bad", model="no-such-model")]
        batch = client.messages.batches.create(requests=requests)
        wait_ended(client, batch.id)
        names = {"client": client, "batch": batch, "requests": requests}
        for snippet in snippets[:2]:
            exec(snippet, names)
        retry = names["retry"]
        again = names["batch"]
        assert isinstance(retry, anthropic.types.messages.MessageBatch)
        counts = retry.request_counts
        assert counts.processing + counts.errored == 1  # the errored one (its model: still none)
        assert isinstance(again, anthropic.types.messages.MessageBatch)
        assert again.id != batch.id


def test_the_openai_face_snippet_runs(server: RunningServer) -> None:
    """The OpenAI face's create with an Idempotency-Key, run twice: one batch."""
    snippet = _snippets()[2]
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as client:
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
        body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
        data = json.dumps(line | {"body": body}).encode() + b"\n"
        file = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
        made = []
        for _ in range(2):
            names: dict[str, object] = {"client": client, "file": file}
            exec(snippet, names)
            made.append(names["batch"])
        assert all(isinstance(batch, openai.types.Batch) for batch in made)
        assert len({batch.id for batch in made if isinstance(batch, openai.types.Batch)}) == 1
