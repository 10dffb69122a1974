from __future__ import annotations

import anthropic

from tests.conftest import mock_request, wait_ended


def test_batch_runs_to_end_on_mock(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=[mock_request(f"r{i}") for i in range(10)])
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.succeeded == 10
    results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
    assert results == {f"r{i}": "succeeded" for i in range(10)}
