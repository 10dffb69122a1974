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
