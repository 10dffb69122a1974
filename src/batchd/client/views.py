"""Rendering for people (rich tables) and for scripts (JSON)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from batchd.client.http import Batch
from batchd.client.progress import STATES

_STATUS_STYLE = {"in_progress": "blue", "canceling": "yellow", "ended": "green"}


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


def _status(batch: Batch) -> str:
    status = str(batch["processing_status"])
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def batches_table(batches: Sequence[Batch]) -> Table:
    table = Table("id", "status", "created", "ended", "processing", *STATES, box=None)
    for batch in batches:
        counts = batch["request_counts"]
        table.add_row(
            batch["id"],
            _status(batch),
            _when(batch["created_at"]),
            _when(batch["ended_at"]),
            *(f"{counts[key]:,}" for key in ("processing", *STATES)),
        )
    return table


def batch_table(batch: Batch) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("id", batch["id"])
    table.add_row("status", _status(batch))
    for field in ("created_at", "cancel_initiated_at", "ended_at", "expires_at", "archived_at"):
        table.add_row(field.removesuffix("_at").replace("_", " "), _when(batch.get(field)))
    counts = batch["request_counts"]
    for key in ("processing", *STATES):
        table.add_row(key, f"{counts[key]:,}")
    table.add_row("results", batch.get("results_url") or "-")
    return table


def results_table(rows: Iterable[tuple[str, str, str]]) -> Table:
    table = Table("custom_id", "result", "detail", box=None)
    for custom_id, kind, detail in rows:
        style = {"succeeded": "green", "errored": "red"}.get(kind, "yellow")
        table.add_row(custom_id, f"[{style}]{kind}[/]", detail)
    return table


def generated_ids(mapping: Sequence[tuple[int, str]], shown: int = 20) -> list[str]:
    """Lines telling which input line got which generated custom id."""
    lines = [f"  line {line} -> {custom_id}" for line, custom_id in mapping[:shown]]
    if len(mapping) > shown:
        lines.append(f"  ... and {len(mapping) - shown:,} more (line N -> line-N)")
    return ["generated custom ids:", *lines]
