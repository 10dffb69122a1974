"""The console's results view in headless Chromium: a batch's results paged (also while it
runs), filtered by type, found by custom_id, one opened with its message rendered; and the
retry link between batches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types.messages.batch_create_params import Request
from playwright.sync_api import Browser, Page, expect

from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.keys import make_keys
from tests.support.upstream import (
    FakeUpstream,
    Fault,
    invalid_request,
    serve_upstream,
    upstream_backend,
)
from tests.test_console import browser

__all__ = ["browser"]  # the fixture, used here too

FAILING = {"q3", "q17", "q24"}
# Where to keep the screenshot (the README's docs/console-results.png when refreshed by hand).
SCREENSHOT = os.environ.get("BATCHD_CONSOLE_SCREENSHOT")


def _fails(key: str, attempt: int) -> Fault | None:
    return (
        invalid_request("messages.0.content: this one was chosen to fail")
        if key in FAILING
        else None
    )


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with serve_upstream(faults=_fails) as running:
        running.hold()
        try:
            yield running
        finally:
            running.release()


def _requests(n: int) -> list[Request]:
    """Every fifth request calls a tool; the rest are plain questions."""
    tool = {
        "name": "lookup",
        "description": "Look a word up",
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    return [
        mock_request(f"q{i}", f"q{i}", model="claude-1", max_tokens=64,
                     **({"tools": [tool], "tool_choice": {"type": "tool", "name": "lookup"}}
                        if i % 5 == 0 else {}))
        for i in range(n)
    ]  # fmt: skip


def _rows(page: Page) -> list[str]:
    return [r.get_attribute("data-custom-id") or "" for r in page.locator("#result-rows tr").all()]


def test_the_results_view_pages_filters_finds_and_opens(
    start_server: StartServer, upstream: FakeUpstream, browser: Browser, tmp_path: Path
) -> None:
    backend = upstream_backend(upstream, max_concurrency=4, adaptive_concurrency=False)
    server = start_server(backends=[backend])
    sdk = anthropic.Anthropic(base_url=server.url, api_key="k")
    batch = sdk.messages.batches.create(requests=_requests(30))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{server.url}/console/batches/{batch.id}")
    expect(page.locator("#batch-status")).to_have_text("in_progress")

    # while it runs: the results recorded so far
    upstream.release(5)  # then the backend's 4 slots hold calls again: nothing more ends
    wait_until(
        lambda: sdk.messages.batches.retrieve(batch.id).request_counts.succeeded == 5,
        "five requests did not succeed",
    )
    counts = sdk.messages.batches.retrieve(batch.id).request_counts
    expect(page.locator("#result-rows tr")).to_have_count(5 + counts.errored, timeout=15_000)
    expect(page.locator("#batch-status")).to_have_text("in_progress")
    upstream.release()
    wait_ended(sdk, batch.id)
    expect(page.locator("#batch-status")).to_have_text("ended", timeout=10_000)

    # paged, 20 at a time, in request order
    expect(page.locator("#result-rows tr")).to_have_count(20)
    assert _rows(page) == [f"q{i}" for i in range(20)]
    page.click("#results-next")
    expect(page.locator("#result-rows tr")).to_have_count(10)
    assert _rows(page) == [f"q{i}" for i in range(20, 30)]
    expect(page.locator("#results-next")).to_be_disabled()
    page.click("#results-first")
    expect(page.locator("#result-rows tr")).to_have_count(20)

    # filtered by type
    page.select_option("#result-type", "errored")
    expect(page.locator("#result-rows tr")).to_have_count(3)
    assert sorted(_rows(page)) == sorted(FAILING)

    # an errored one opened: its error
    page.click('#result-rows tr[data-custom-id="q17"]')
    expect(page.locator("#result-view")).to_be_visible()
    expect(page.locator("#result-body")).to_contain_text("invalid_request_error")
    expect(page.locator("#result-body")).to_contain_text("this one was chosen to fail")

    # found by custom_id: a tool call opened, its input shown
    page.select_option("#result-type", "")
    page.fill("#result-search", "q15")
    page.click("#results-form button")
    expect(page.locator("#result-rows tr")).to_have_count(1)
    page.click('#result-rows tr[data-custom-id="q15"]')
    expect(page.locator("#result-body .block.tool_use")).to_contain_text("lookup")
    expect(page.locator("#result-body .block.tool_use pre")).to_contain_text('"text": "q15"')
    expect(page.locator("#result-body .block.text")).to_contain_text("q15")

    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "console-results.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # a retry of the failed ones links back, and the original links to it
    retry = sdk.post(f"/v1/messages/batches/{batch.id}/retry", cast_to=object)
    assert isinstance(retry, dict)
    page.goto(f"{server.url}/console/batches/{retry['id']}")
    expect(page.locator("#timings")).to_contain_text(f"retry of{batch.id}")
    page.click(f'#timings a[href="/console/batches/{batch.id}"]')
    expect(page.locator("#timings")).to_contain_text(f"retried by{retry['id']}")
    expect(page.locator("#counts")).to_contain_text("reused answers0")
    sdk.close()


def test_the_results_routes_keep_to_the_workspace_of_the_key(
    start_server: StartServer, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"alice": "team-a", "bob": "team-b"})
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key=keys["alice"]) as sdk:
        batch = sdk.messages.batches.create(requests=[mock_request("x")])
        wait_ended(sdk, batch.id)
    routes = [
        f"/console/api/batches/{batch.id}/results",
        f"/console/api/batches/{batch.id}/results/x",
    ]
    with httpx.Client(base_url=server.url) as http:
        for route in routes:
            assert http.get(route).status_code == 401
            assert http.get(route, headers={"x-api-key": keys["bob"]}).status_code == 404
            assert http.get(route, headers={"x-api-key": keys["alice"]}).status_code == 200
        one = http.get(routes[1], headers={"x-api-key": keys["alice"]}).json()
    assert one["result"]["type"] == "succeeded"
