"""Results while a batch runs (batchd's own): ``?partial=true`` with a cursor streams the
lines recorded so far; every line is a final one, none comes twice across cursors, and the
final results endpoint is unchanged."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.upstream import FakeUpstream, upstream_backend

CURSOR = "batchd-results-cursor"


def _backend(upstream: FakeUpstream) -> dict[str, Any]:
    return upstream_backend(upstream, max_concurrency=2, adaptive_concurrency=False)


def _partial(client: anthropic.Anthropic, batch_id: str, after: str | None) -> httpx.Response:
    """One partial read through the SDK's own client (its raw response)."""
    params = {"partial": "true"} | ({"after": after} if after is not None else {})
    return client.get(
        f"/v1/messages/batches/{batch_id}/results",
        cast_to=httpx.Response,
        options={"params": params},
    )


def _lines(response: httpx.Response) -> list[str]:
    lines = response.text.splitlines()
    for line in lines:  # each one a result line the SDK parses
        MessageBatchIndividualResponse.model_validate_json(line)
    return lines


def test_partial_reads_grow_to_the_final_results_without_repeats(
    start_server: StartServer, held: FakeUpstream
) -> None:
    server = start_server(backends=[_backend(held)])
    requests = [mock_request(f"r{i}", f"r {i}", model="claude-1") for i in range(10)]
    requests.append(mock_request("bad", "x", model="claude-1", max_tokens=-1))  # errored at once
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=requests)
        first = _partial(client, batch.id, None)
        read = _lines(first)
        assert [MessageBatchIndividualResponse.model_validate_json(x).custom_id for x in read] == [
            "bad"
        ]
        cursor = first.headers[CURSOR]
        released = 0
        for step in (3, 4, 3):
            held.release(step)
            released += step
            _wait_succeeded(client, batch.id, released)
            response = _partial(client, batch.id, cursor)
            new = _lines(response)
            assert not set(new) & set(read)  # nothing twice across cursors
            read += new
            assert len(read) == 1 + released  # everything recorded so far, no more
            cursor = response.headers[CURSOR]
        wait_ended(client, batch.id)
        assert _lines(_partial(client, batch.id, cursor)) == []
        final = client.get(
            f"/v1/messages/batches/{batch.id}/results", cast_to=httpx.Response
        ).text.splitlines()
    assert sorted(read) == sorted(final)  # the same lines, byte for byte


def _wait_succeeded(client: anthropic.Anthropic, batch_id: str, n: int) -> None:
    def done() -> bool:
        return client.messages.batches.retrieve(batch_id).request_counts.succeeded >= n

    wait_until(done, f"{n} requests did not succeed")


def test_the_final_results_of_a_running_batch_are_still_refused(
    start_server: StartServer, held: FakeUpstream
) -> None:
    server = start_server(backends=[_backend(held)])
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request("a", "a", model="claude-1")])
        with httpx.Client(base_url=server.url, headers={"x-api-key": "k"}) as http:
            plain = http.get(f"/v1/messages/batches/{batch.id}/results")
            partial = http.get(f"/v1/messages/batches/{batch.id}/results?partial=true")
        assert plain.status_code == 400
        assert "has not ended yet" in plain.json()["error"]["message"]
        assert partial.status_code == 200
        assert partial.headers["content-type"] == "application/x-jsonl"
        assert partial.text == ""


@pytest.mark.parametrize(
    "query",
    [
        "after=0",  # a cursor without partial=true
        "partial=true&after=99",  # a cursor this batch never gave
    ],
)
def test_a_cursor_out_of_place_is_a_400(start_server: StartServer, query: str) -> None:
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        batch = client.messages.batches.create(requests=[mock_request("a")])
        wait_ended(client, batch.id)
        with httpx.Client(base_url=server.url, headers={"x-api-key": "k"}) as http:
            response = http.get(f"/v1/messages/batches/{batch.id}/results?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
