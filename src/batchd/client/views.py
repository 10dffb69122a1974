"""Rendering for people (rich tables) and for scripts (JSON).

Every table cell is plain text with its control characters removed: result text echoes
untrusted input, and a cell must neither drive the terminal (escape sequences that clear
it, retitle its window or write the clipboard) nor be read as rich markup (``[link=…]``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchd.client.http import Batch
from batchd.client.progress import STATES
from batchd.domain import DailyUsage
from batchd.usecases.usage import Cost

_STATUS_STYLE = {"in_progress": "blue", "canceling": "yellow", "ended": "green"}
# C0 and C1 controls, DEL, and the bidirectional overrides that reorder what is shown.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def cell(value: object, style: str = "") -> Text:
    """``value`` as one table cell: plain text (no markup), controls removed, each run of
    whitespace controls (newlines, tabs) shown as one space."""
    text = " ".join(str(value).split())
    return Text(_CONTROLS.sub("", text), style=style)


def console(*, stderr: bool = False) -> Console:
    """A console that keeps table rows whole when the output is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def to_json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _status(batch: Batch) -> Text:
    status = str(batch["processing_status"])
    return cell(status, _STATUS_STYLE.get(status, "white"))


def batches_table(batches: Sequence[Batch]) -> Table:
    table = Table("id", "status", "created", "ended", "processing", *STATES, box=None)
    for batch in batches:
        counts = batch["request_counts"]
        table.add_row(
            cell(batch["id"]),
            _status(batch),
            cell(_when(batch["created_at"])),
            cell(_when(batch["ended_at"])),
            *(cell(f"{counts[key]:,}") for key in ("processing", *STATES)),
        )
    return table


def batch_table(
    batch: Batch, details: dict[str, Any] | None = None, schedule: Batch | None = None
) -> Table:
    """A batch's facts; with batchd's ``details`` (retries, reused answers) and
    ``schedule`` (priority and deadline), those too."""
    table = Table(show_header=False, box=None)
    table.add_row(cell("id"), cell(batch["id"]))
    table.add_row(cell("status"), _status(batch))
    for field in ("created_at", "cancel_initiated_at", "ended_at", "expires_at", "archived_at"):
        label = field.removesuffix("_at").replace("_", " ")
        table.add_row(cell(label), cell(_when(batch.get(field))))
    counts = batch["request_counts"]
    for key in ("processing", *STATES):
        table.add_row(cell(key), cell(f"{counts[key]:,}"))
    table.add_row(cell("results"), cell(batch.get("results_url") or "-"))
    if details is not None:  # batchd's own
        table.add_row(cell("reused answers"), cell(f"{details['reused_answers']:,}"))
        table.add_row(cell("retry of"), cell(details["retry_of"] or "-"))
        table.add_row(cell("retried by"), cell(" ".join(details["retried_by"]) or "-"))
    if schedule is not None:
        table.add_row(cell("priority"), cell(schedule["priority"]))
        table.add_row(cell("window"), cell(schedule["completion_window"]))
        table.add_row(cell("projected end"), cell(_when(schedule.get("projected_end_at"))))
        if schedule["at_risk"]:
            table.add_row(cell("deadline"), cell("AT RISK: will miss it at the rate so far", "red"))
    return table


def _cost(cost: Any) -> str:
    if not cost:
        return "-"
    text = f"{cost['batch']:,.4f} {cost['currency']} (interactive {cost['interactive']:,.4f})"
    if cost["unpriced_models"]:
        text += f"; no price for {', '.join(cost['unpriced_models'])}"
    return text


def usage_table(usage: dict[str, Any]) -> Table:
    """A batch's tokens and cost (``GET .../usage``), then one line per model."""
    table = Table(show_header=False, box=None)
    table.add_row(cell("input tokens"), cell(f"{usage['input_tokens']:,}"))
    table.add_row(cell("output tokens"), cell(f"{usage['output_tokens']:,}"))
    table.add_row(cell("cache-read tokens"), cell(f"{usage['cache_read_input_tokens']:,}"))
    table.add_row(cell("cost"), cell(_cost(usage["cost"])))
    for model in usage["models"]:
        tokens = f"{model['input_tokens']:,} in / {model['output_tokens']:,} out"
        line = f"{model['requests']:,} requests, {tokens}, cost {_cost(model['cost'])}"
        table.add_row(cell(f"model {model['model'] or '-'}"), cell(line))
    return table


def estimate_table(estimates: Sequence[dict[str, Any]]) -> Table:
    """Per model, then in all: requests, input tokens, the output bound and their cost."""
    table = Table("model", "backend", "counted by", "requests", "input tokens", "max output",
                  "cost (batch / interactive)", box=None)  # fmt: skip
    totals = [0, 0, 0, 0, 0.0, 0.0]
    currency = ""
    for estimate in estimates:
        totals[3] += estimate["refused"]
        for m in estimate["models"]:
            table.add_row(
                *(cell(m[k]) for k in ("model", "backend", "method")),
                *(cell(f"{m[k]:,}") for k in ("requests", "input_tokens", "max_output_tokens")),
                cell(_cost(m["cost"])),
            )
            totals[0] += m["requests"]
            totals[1] += m["input_tokens"]
            totals[2] += m["max_output_tokens"]
        if estimate["cost"]:
            totals[4] += estimate["cost"]["batch"]
            totals[5] += estimate["cost"]["interactive"]
            currency = estimate["cost"]["currency"]
    cost = f"{totals[4]:,.4f} / {totals[5]:,.4f} {currency}" if currency else "-"
    table.add_row(
        cell("all", "bold"), cell(""), cell(f"refused: {totals[3]:,}" if totals[3] else ""),
        *(cell(f"{int(t):,}", "bold") for t in totals[:3]), cell(cost, "bold"),
    )  # fmt: skip
    return table


def daily_usage_table(
    rows: Iterable[tuple[DailyUsage, Cost | None]], currency: str | None
) -> Table:
    """Usage per day, workspace and model (``batchd usage``)."""
    columns = ["day", "workspace", "model", "requests", "input", "output", "cache read"]
    table = Table(*columns, *([f"cost {currency}", "interactive"] if currency else []), box=None)
    for row, priced in rows:
        requests = " ".join(f"{k}={v:,}" for k, v in sorted(row.requests.items()) if v)
        tokens = row.tokens
        cost = [f"{priced.batch:,.4f}", f"{priced.interactive:,.4f}"] if priced else []
        table.add_row(
            *(cell(v) for v in (row.day, row.workspace, row.model or "-", requests or "-")),
            *(cell(f"{t:,}") for t in (tokens.input_tokens, tokens.output_tokens)),
            cell(f"{tokens.cache_read_tokens:,}"),
            *(cell(c) for c in cost),
        )
    return table


def results_table(rows: Iterable[tuple[str, str, str]]) -> Table:
    table = Table("custom_id", "result", "detail", box=None)
    for custom_id, kind, detail in rows:
        style = {"succeeded": "green", "errored": "red"}.get(kind, "yellow")
        table.add_row(cell(custom_id), cell(kind, style), cell(detail))
    return table


def generated_ids(mapping: Sequence[tuple[int, str]], shown: int = 20) -> list[str]:
    """Lines telling which input line got which generated custom id."""
    lines = [f"  line {line} -> {custom_id}" for line, custom_id in mapping[:shown]]
    if len(mapping) > shown:
        lines.append(f"  ... and {len(mapping) - shown:,} more (line N -> line-N)")
    return ["generated custom ids:", *lines]
