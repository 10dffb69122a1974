"""Usage: tokens and requests summed as results are recorded, equal to the result lines'."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchd.config import PriceConfig
from batchd.domain import ClaimedRequest, Outcome, RequestState, TokenUsage
from batchd.engine.worker import usage_of
from batchd.schemas.results import errored_line, succeeded_line
from batchd.store import NewRequest, Store
from batchd.usecases.usage import Prices
from tests.conftest import StartServer, mock_request, wait_ended, wait_until
from tests.support.keys import make_keys
from tests.support.process import run_batchd

T0 = 1_800_000_000.0


@pytest.fixture
def store(each_store: Store) -> Store:
    """A migrated store on SQLite and on PostgreSQL."""
    return each_store


def _answer(request: ClaimedRequest, worker: str) -> Outcome:
    """A succeeded outcome whose usage depends on the request and on who ran it (a request
    run twice reports different figures each time, so a double count would show)."""
    tokens = {"input_tokens": 10 + request.id, "output_tokens": len(worker) * request.attempt}
    message = {"id": "m", "usage": tokens | {"cache_read_input_tokens": 3}}
    line = succeeded_line(request.custom_id, message)
    return Outcome(request, RequestState.SUCCEEDED, line, model="claude-x", usage=usage_of(message))


def line_totals(lines: list[bytes]) -> tuple[TokenUsage, Counter[str]]:
    """The tokens and the result types that the result lines themselves report."""
    tokens, types = TokenUsage(), Counter[str]()
    for line in lines:
        result = json.loads(line)["result"]
        types[result["type"]] += 1
        if result["type"] == "succeeded":
            usage = result["message"]["usage"]
            tokens += TokenUsage(
                usage["input_tokens"],
                usage["output_tokens"],
                usage.get("cache_read_input_tokens") or 0,
            )
    return tokens, types


async def _lines(store: Store, seq: int) -> list[bytes]:
    from batchd.usecases.batches import _line

    out = []
    async for page in store.iter_results(seq, 100):
        out += [r[3] if r[3] is not None else _line(r[1], r[2]).rstrip() for r in page]
    return out


async def test_usage_equals_the_result_lines_after_a_lost_lease_and_a_retry(store: Store) -> None:
    refused = NewRequest(
        "bad", None, b"{}", RequestState.ERRORED, errored_line("bad", "invalid_request_error", "")
    )
    queued = [NewRequest(f"r{i}", "b", b"{}", RequestState.QUEUED) for i in range(5)]
    batch = await store.create_batch("msgbatch_u", "ws", T0, T0 + 600, [refused, *queued])
    first = (await store.claim("b", [batch.seq], "w1", 5, T0 + 30)).requests
    await store.record("w1", [_answer(r, "w1") for r in first[:2]], T0 + 1)
    await store.sweep(T0 + 31)  # w1 "crashed": its other leases ran out, requeued
    second = (await store.claim("b", [batch.seq], "w2", 5, T0 + 90)).requests
    assert len(second) == 3
    late = await store.record("w1", [_answer(r, "w1") for r in first[2:]], T0 + 32)
    assert late.applied == 0  # fenced: run twice, counted once
    errored = Outcome(
        second[0], RequestState.ERRORED, errored_line("r2", "api_error", "x"), model="m"
    )
    await store.record("w2", [errored, *(_answer(r, "w2") for r in second[1:])], T0 + 33)
    tokens, types = line_totals(await _lines(store, batch.seq))
    models = await store.batch_usage(batch.seq)
    assert sum((m.tokens for m in models), TokenUsage()) == tokens
    assert sum(m.requests for m in models) == 5
    [day] = [d for d in await store.daily_usage("ws", "2000-01-01") if d.model == "claude-x"]
    assert day.tokens == tokens
    days = await store.daily_usage(None, "2000-01-01")
    assert sum((Counter(d.requests) for d in days), Counter()) == types
    assert await store.daily_usage("other", "2000-01-01") == []
    [(workspace, backend, by_backend)] = await store.tokens_by_workspace()
    assert (workspace, backend, by_backend) == ("ws", "b", tokens)


def test_prices_give_the_batch_and_the_interactive_cost() -> None:
    prices = Prices(
        [
            PriceConfig(models=["claude-*"], input=3, output=15, cache_read=0.3),
            PriceConfig(models=["*"], input=1, output=1, batch_discount=0),
        ]
    )
    cost = prices.cost("claude-x", TokenUsage(1_000_000, 100_000, 2_000_000))
    assert (cost.interactive, cost.batch) == pytest.approx((3 + 1.5 + 0.6, (3 + 1.5 + 0.6) / 2))
    other = prices.cost("llama", TokenUsage(500_000, 500_000, 0))
    assert (other.interactive, other.batch) == (1.0, 1.0)
    unpriced = Prices([PriceConfig(models=["gpt-*"], input=1, output=1)]).total(
        [("claude-x", TokenUsage(1, 1, 0)), ("gpt-4", TokenUsage(1_000_000, 0, 0))]
    )
    assert (unpriced.batch, unpriced.unpriced) == (0.5, ("claude-x",))


def _get(client: anthropic.Anthropic, path: str) -> Any:
    return client.get(path, cast_to=object)


def test_a_batch_shows_its_usage_and_cost_to_its_workspace_only(
    start_server: StartServer, tmp_path: Path
) -> None:
    keys = make_keys(tmp_path / "batchd.db", {"a": "team-a", "b": "team-b"})
    prices = [PriceConfig(models=["mock"], input=2, output=10)]
    server = start_server(prices=prices)
    with (
        anthropic.Anthropic(base_url=server.url, api_key=keys["a"]) as a,
        anthropic.Anthropic(base_url=server.url, api_key=keys["b"]) as b,
    ):
        batch = a.messages.batches.create(
            requests=[mock_request(f"q{i}", "word " * i) for i in range(1, 6)]
        )
        wait_ended(a, batch.id)
        lines = [r.to_json(indent=None).encode() for r in a.messages.batches.results(batch.id)]
        tokens, _ = line_totals(lines)
        usage = _get(a, f"/v1/messages/batches/{batch.id}/usage")
        with pytest.raises(anthropic.NotFoundError):
            _get(b, f"/v1/messages/batches/{batch.id}/usage")
        assert _get(b, "/v1/usage")["data"] == []
        daily = _get(a, "/v1/usage")
    assert usage["type"] == "message_batch_usage"
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        tokens.input_tokens,
        tokens.output_tokens,
    )
    assert usage["request_counts"]["succeeded"] == 5
    interactive = (tokens.input_tokens * 2 + tokens.output_tokens * 10) / 1e6
    assert usage["cost"]["interactive"] == pytest.approx(interactive, abs=1e-6)
    assert usage["cost"]["batch"] == pytest.approx(interactive / 2, abs=1e-6)
    [day] = daily["data"]
    assert (day["workspace"], day["model"], day["requests"]["succeeded"]) == ("team-a", "mock", 5)
    assert daily["currency"] == "USD"


def test_usage_survives_kill_9_and_equals_the_result_lines(tmp_path: Path) -> None:
    config = tmp_path / "batchd.toml"
    config.write_text(
        '[[backends]]\nname = "mock"\nkind = "mock"\nmodels = ["mock"]\nlatency_ms = 20\n'
    )
    args = ("--config", str(config))
    env = {"BATCHD_LEASE_SECONDS": "2"}  # the killed server's leases run out soon
    with run_batchd(tmp_path, *args, env=env) as first:
        with anthropic.Anthropic(base_url=first.url, api_key="k", max_retries=0) as client:
            batch = client.messages.batches.create(
                requests=[mock_request(f"q{i}", f"prompt {i} " * (i % 7)) for i in range(400)]
            )
            wait_until(
                lambda: client.messages.batches.retrieve(batch.id).request_counts.succeeded > 50,
                "some results recorded",
            )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
    with run_batchd(tmp_path, *args, env=env) as second:
        with anthropic.Anthropic(base_url=second.url, api_key="k") as client:
            ended = wait_ended(client, batch.id, timeout=120)
            lines = [
                r.to_json(indent=None).encode() for r in client.messages.batches.results(batch.id)
            ]
            usage = _get(client, f"/v1/messages/batches/{batch.id}/usage")
            metrics = client.get("/metrics", cast_to=str)
        shown = subprocess.run(
            [sys.executable, "-m", "batchd", "batches", "show", batch.id, "--url", second.url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    tokens, types = line_totals(lines)
    assert ended.request_counts.succeeded == types["succeeded"] == 400
    assert (usage["input_tokens"], usage["output_tokens"]) == (
        tokens.input_tokens,
        tokens.output_tokens,
    )
    assert f"{tokens.input_tokens:,}" in shown
    series = 'batchd_workspace_tokens_total{backend="mock",kind="input",workspace="default"}'
    assert f"{series} {float(tokens.input_tokens)}" in metrics


def test_submit_estimate_counts_through_the_backend_and_creates_nothing(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(prices=[PriceConfig(models=["mock"], input=1, output=2)])
    prompts = ["Say hi.", "Name three primes, and say why each is one.", "Count to ten."]
    lines = [json.dumps(mock_request(f"p{i}", p, max_tokens=100)) for i, p in enumerate(prompts)]
    lines.append(json.dumps({"model": "nowhere", "max_tokens": 5, "messages": []}))
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n")
    shown = subprocess.run(
        [sys.executable, "-m", "batchd", "submit", str(path), "--estimate", "--url", server.url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    with anthropic.Anthropic(base_url=server.url, api_key="k") as client:
        counted = sum(
            client.messages.count_tokens(
                model="mock", messages=[{"role": "user", "content": p}]
            ).input_tokens
            for p in prompts
        )
        assert client.messages.batches.list().data == []
    interactive = (counted * 1 + 300 * 2) / 1e6
    total = [line for line in shown.splitlines() if line.lstrip().startswith("all")]
    assert total, shown
    assert f"{counted:,}" in total[0]
    assert " 300 " in total[0]
    assert "refused: 1" in total[0]
    assert f"{interactive / 2:,.4f} / {interactive:,.4f} USD" in total[0]
    assert "estimate" in shown  # the mock counts by the documented estimate
