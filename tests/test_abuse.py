"""One key holder cannot stall, starve or flood the others (issue 19, round 2): bounded
max_tokens, bounded PDF extraction, byte budgets for bodies, bounded connections, and no
recursion over client JSON."""

from __future__ import annotations

import anthropic
import httpx2 as httpx
import pytest

from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.server import RunningServer

# --- max_tokens: bounded per backend ------------------------------------------------------


def test_a_max_tokens_over_the_backend_limit_is_that_requests_error(
    client: anthropic.Anthropic,
) -> None:
    batch = client.messages.batches.create(
        requests=[  # type: ignore[list-item]
            mock_request("huge", max_tokens=10**18),
            mock_request("fine"),
        ]
    )
    wait_ended(client, batch.id)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["fine"].type == "succeeded"
    assert results["huge"].type == "errored"
    assert results["huge"].error.error.type == "invalid_request_error"
    assert "max_tokens" in results["huge"].error.error.message


def test_a_max_tokens_over_the_limit_is_refused_on_messages(start_server: StartServer) -> None:
    server = start_server(
        backends=[{"name": "m", "kind": "mock", "models": ["m"], "max_output_tokens": 100}]
    )
    with anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0) as client:
        ok = client.messages.create(
            model="m", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.type == "message"
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(
                model="m", max_tokens=101, messages=[{"role": "user", "content": "hi"}]
            )
    assert "max_tokens" in refused.value.message


# --- JSON nested deep: 400, never a recursion error ------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages"])
@pytest.mark.parametrize("depth", [600, 5_000])  # through msgspec's decoder; past it
def test_deeply_nested_content_is_a_400(server: RunningServer, path: str, depth: int) -> None:
    inner = "[" * depth + '"x"' + "]" * depth  # written by hand: json.dumps would recurse
    body = (
        '{"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", '
        f'"input": {{"v": {inner}}}}}]}}, {{"role": "user", "content": "go on"}}]}}'
    )
    answer = httpx.post(
        server.url + path, content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "nested too deeply" in answer.json()["error"]["message"]
