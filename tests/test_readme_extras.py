"""The README's snippets of batchd's own extensions run as written against a live server."""

from __future__ import annotations

import re
from pathlib import Path

import anthropic

from tests.conftest import mock_request, wait_ended
from tests.support.server import RunningServer

README = Path(__file__).parent.parent / "README.md"


def _snippets() -> list[str]:
    section = README.read_text().split("## Beyond the hosted API")[1].split("\n## ")[0]
    return re.findall(r"```py\n(.*?)```", section, re.S)


def test_the_extension_snippets_run(server: RunningServer) -> None:
    snippets = _snippets()
    assert len(snippets) == 2
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        requests = [mock_request("ok"), mock_request("bad", model="no-such-model")]
        batch = client.messages.batches.create(requests=requests)
        wait_ended(client, batch.id)
        names = {"client": client, "batch": batch, "requests": requests}
        for snippet in snippets:
            exec(snippet, names)
        retry = names["retry"]
        again = names["batch"]
        assert isinstance(retry, anthropic.types.messages.MessageBatch)
        counts = retry.request_counts
        assert counts.processing + counts.errored == 1  # the errored one (its model: still none)
        assert isinstance(again, anthropic.types.messages.MessageBatch)
        assert again.id != batch.id
