"""Checks of a database that must hold whatever happened: counts agree with rows (but for
batches past retention whose requests are deleted: their counters are all that is left)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg

_CHECK = """
SELECT b.id, b.processing_status, b.total, b.succeeded, b.errored, b.canceled, b.expired,
       count(r.id),
       sum(CASE WHEN r.state = 'succeeded' THEN 1 ELSE 0 END),
       sum(CASE WHEN r.state = 'errored' THEN 1 ELSE 0 END),
       sum(CASE WHEN r.state = 'canceled' THEN 1 ELSE 0 END),
       sum(CASE WHEN r.state = 'expired' THEN 1 ELSE 0 END),
       sum(CASE WHEN r.state IN ('queued', 'running') THEN 1 ELSE 0 END),
       b.purged_at
FROM batches b LEFT JOIN requests r ON r.batch_seq = b.seq
GROUP BY b.seq
"""


def count_mismatches(db: Path) -> list[str]:
    """Every batch whose counters disagree with its rows, or that ended with work left."""
    with closing(sqlite3.connect(db)) as conn:
        return _problems(conn.execute(_CHECK))


async def pg_count_mismatches(url: str) -> list[str]:
    """The same check on a PostgreSQL database."""
    conn = await asyncpg.connect(url)
    try:
        return _problems(await conn.fetch(_CHECK))
    finally:
        await conn.close()


def _problems(rows: Iterable[Sequence[Any]] | Iterable[asyncpg.Record]) -> list[str]:
    problems = []
    for row in rows:
        batch_id, status, total, *counters = row[:7]
        rows_n, *by_state = (int(value or 0) for value in row[7:12])
        unfinished, purged_at = row[12] or 0, row[13]
        if purged_at is not None:
            if rows_n or status != "ended":
                problems.append(f"{batch_id}: purged ({status}) with {rows_n} requests left")
        elif (total, *counters) != (rows_n, *by_state):
            problems.append(f"{batch_id}: counters {(total, *counters)} rows {(rows_n, *by_state)}")
        if status == "ended" and unfinished:
            problems.append(f"{batch_id}: ended with {unfinished} unfinished requests")
    return problems
