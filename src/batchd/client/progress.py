"""Waiting for batches to end, with a live progress bar over all their requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from batchd.client.http import Batch, BatchdClient

STATES = ("succeeded", "errored", "canceled", "expired")
_STYLES = {"succeeded": "green", "errored": "red", "canceled": "yellow", "expired": "magenta"}


class RateColumn(ProgressColumn):
    """Requests finished per second, over rich's recent samples."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:,.1f} req/s" if speed else "- req/s", style="cyan")


def tally(batches: Sequence[Batch]) -> dict[str, int]:
    """Request counts summed over batches, plus ``done`` and ``total``."""
    sums = {key: 0 for key in ("processing", *STATES)}
    for batch in batches:
        for key in sums:
            sums[key] += int(batch["request_counts"][key])
    sums["done"] = sum(sums[state] for state in STATES)
    sums["total"] = sums["done"] + sums["processing"]
    return sums


def describe(counts: dict[str, int]) -> str:
    return "  ".join(f"[{_STYLES[s]}]{counts[s]:,} {s}[/]" for s in STATES)


def ended(batch: Batch) -> bool:
    return bool(batch["processing_status"] == "ended")


async def wait_for(
    client: BatchdClient,
    batch_ids: Sequence[str],
    console: Console,
    interval: float = 1.0,
    each_round: Callable[[], Awaitable[None]] | None = None,
) -> list[Batch]:
    """Poll until every batch has ended; returns them in the order given. ``each_round`` is
    awaited after every poll, the last one after every batch was seen ended."""
    batches = {batch_id: await client.retrieve(batch_id) for batch_id in batch_ids}
    counts = tally(list(batches.values()))
    label = f"{len(batch_ids)} batch" + ("es" if len(batch_ids) > 1 else "")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(
            label, total=counts["total"], completed=counts["done"], states=describe(counts)
        )
        while not all(ended(batch) for batch in batches.values()):
            await asyncio.sleep(interval)
            for batch_id, batch in batches.items():
                if not ended(batch):
                    batches[batch_id] = await client.retrieve(batch_id)
            counts = tally(list(batches.values()))
            progress.update(task, completed=counts["done"], states=describe(counts))
            if each_round is not None:
                await each_round()
    if each_round is not None:
        await each_round()
    return [batches[batch_id] for batch_id in batch_ids]
