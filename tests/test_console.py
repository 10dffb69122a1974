"""The web console in headless Chromium, and the workspace rules of its data route."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types.messages.batch_create_params import Request
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.conftest import StartServer, mock_request, wait_ended

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SLOW_BACKEND = {
    "name": "slow",
    "kind": "mock",
    "models": ["slow-*"],
    "max_concurrency": 2,
    "latency_ms": 100,
}


def _create_key(db: Path, workspace: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "batchd.cli", "keys", "create", workspace,
         "--workspace", workspace, "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _slow_requests(prefix: str, n: int) -> list[Request]:
    return [mock_request(f"{prefix}{i}", f"{prefix} {i}", model="slow-1") for i in range(n)]


def test_console_follows_cancels_and_downloads(
    start_server: StartServer, tmp_path: Path, browser: Browser
) -> None:
    key = _create_key(tmp_path / "batchd.db", "team-a")
    server = start_server(backends=[SLOW_BACKEND])
    sdk = anthropic.Anthropic(base_url=server.url, api_key=key)
    doomed = sdk.messages.batches.create(requests=_slow_requests("d", 300))
    page: Page = browser.new_page(accept_downloads=True)
    page.goto(f"{server.url}/console")
    page.fill("#key", key)
    page.click("#key-form button")
    expect(page.locator(f'tr[data-batch="{doomed.id}"]')).to_contain_text("in_progress")

    # a batch started while the console is open shows up and its bar advances to done
    followed = sdk.messages.batches.create(
        requests=[*_slow_requests("f", 12), mock_request("broken", model="no-such-model")]
    )
    row = page.locator(f'tr[data-batch="{followed.id}"]')
    expect(row).to_contain_text("in_progress")
    bar = row.locator('[role="progressbar"]')
    first = int(bar.get_attribute("aria-valuenow") or -1)
    assert 0 <= first < 13
    expect(row).to_contain_text("ended", timeout=15_000)
    assert bar.get_attribute("aria-valuenow") == "13"
    expect(row).to_contain_text("12 succeeded · 1 errored")

    # cancel the other one with its button
    page.click(f'a[href="/console/batches/{doomed.id}"]')
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    expect(page.locator("#batch-status")).to_have_text("ended", timeout=10_000)
    expect(page.locator("#counts")).to_contain_text("canceled")
    canceled = sdk.messages.batches.retrieve(doomed.id).request_counts.canceled
    assert canceled > 200

    # the finished batch: its first error, its results as a download
    page.goto(f"{server.url}/console/batches/{followed.id}")
    expect(page.locator("#error-rows")).to_contain_text("not_found_error")
    expect(page.locator("#error-rows")).to_contain_text("broken")
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "results.jsonl"
    download_info.value.save_as(saved)
    results = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"f{i}" for i in range(12)] + ["broken"]
    assert results[0]["result"]["message"]["content"][0]["text"] == "Mock reply: f 0"

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    expect(page.locator("#batch-status")).to_have_text("ended")
    expect(page.locator("#timings")).to_contain_text("took")
    sdk.close()


def test_a_refused_key_asks_again(
    start_server: StartServer, tmp_path: Path, browser: Browser
) -> None:
    _create_key(tmp_path / "batchd.db", "team-a")
    server = start_server()
    page = browser.new_page()
    page.goto(f"{server.url}/console")
    page.fill("#key", "sk-wrong")
    page.click("#key-form button")
    expect(page.locator("#login-error")).to_contain_text("refused")
    assert page.evaluate("sessionStorage.length") == 0


def test_the_errors_route_keeps_to_the_workspace_of_the_key(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = tmp_path / "batchd.db"
    alice, bob = _create_key(db, "team-a"), _create_key(db, "team-b")
    server = start_server()
    with anthropic.Anthropic(base_url=server.url, api_key=alice) as sdk:
        batch = sdk.messages.batches.create(requests=[mock_request("x", model="nope")])
        wait_ended(sdk, batch.id)
    route = f"{server.url}/console/api/batches/{batch.id}/errors"
    assert httpx.get(route).status_code == 401
    assert httpx.get(route, headers={"x-api-key": bob}).status_code == 404
    mine = httpx.get(route, headers={"x-api-key": alice})
    assert mine.json() == {
        "data": [
            {
                "custom_id": "x",
                "error_type": "not_found_error",
                "message": "model: 'nope' is not served here",
            }
        ]
    }


def test_the_console_shows_the_openai_faces_batches_too(
    start_server: StartServer, tmp_path: Path, browser: Browser
) -> None:
    import openai  # the OpenAI face: the same engine, the same console

    from tests.test_openai_face import chat_line, run_batch

    key = _create_key(tmp_path / "batchd.db", "team-a")
    server = start_server()
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key) as client:
        refused = chat_line("refused") | {"body": {"model": "mock", "messages": "x"}}
        batch = run_batch(client, [chat_line("ok"), refused])
    page: Page = browser.new_page(accept_downloads=True)
    page.goto(f"{server.url}/console")
    page.fill("#key", key)
    page.click("#key-form button")
    row = page.locator(f'tr[data-batch="{batch.id}"]')
    expect(row).to_contain_text("ended")
    expect(row).to_contain_text("1 succeeded · 1 errored")

    page.click(f'a[href="/console/batches/{batch.id}"]')
    expect(page.locator("#error-rows")).to_contain_text("refused")
    expect(page.locator("#error-rows")).to_contain_text("invalid_request_error")
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "results.jsonl"
    download_info.value.save_as(saved)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ["ok", "refused"]
