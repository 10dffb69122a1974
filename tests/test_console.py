"""The web console in headless Chromium, and the workspace rules of its data route."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import pytest
from anthropic.types.messages.batch_create_params import Request
from playwright.sync_api import Browser, Page, expect, sync_playwright

from batchd.config import PriceConfig
from tests.conftest import StartServer, mock_request, wait_ended
from tests.support.receiver import serve_receiver

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


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot; also into $BATCHD_SCREENSHOT_DIR when set (docs/ keeps them)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("BATCHD_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["BATCHD_SCREENSHOT_DIR"]) / name)


def test_console_shows_usage_cost_and_webhook_deliveries(
    start_server: StartServer, tmp_path: Path, browser: Browser
) -> None:
    with serve_receiver() as receiver:
        server = start_server(
            prices=[PriceConfig(models=["mock"], input=3, output=15)],
            webhook_allow_private_urls=True,
        )  # open mode: the local user is the operator of workspace "default"
        with anthropic.Anthropic(base_url=server.url, api_key="k") as sdk:
            sdk.post("/v1/webhooks", body={"url": receiver.url}, cast_to=object)
            batch = sdk.messages.batches.create(
                requests=[mock_request(f"u{i}", "many words " * i) for i in range(1, 9)]
            )
            wait_ended(sdk, batch.id)
            receiver.wait_for(1)
            usage: Any = sdk.get(f"/v1/messages/batches/{batch.id}/usage", cast_to=object)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{server.url}/console/usage")
        workspace = page.locator('tr[data-workspace="default"]')
        expect(workspace).to_contain_text(f"{usage['input_tokens']:,}")
        expect(workspace).to_contain_text(f"{usage['cost']['batch']:.4f} USD")
        expect(page.locator("#usage-chart svg rect.input")).to_have_count(1)
        _shot(page, tmp_path, "console-usage.png")

        page.goto(f"{server.url}/console/batches/{batch.id}")
        expect(page.locator("#usage")).to_contain_text(f"{usage['output_tokens']:,}")
        expect(page.locator("#usage")).to_contain_text(f"{usage['cost']['interactive']:.4f} USD")

        page.goto(f"{server.url}/console/webhooks")
        card = page.locator(".endpoint")
        expect(card).to_contain_text(receiver.url)
        expect(card).to_contain_text("message_batch.ended")
        expect(card.locator("td.delivered")).to_have_count(1, timeout=10_000)
        _shot(page, tmp_path, "console-webhooks.png")
