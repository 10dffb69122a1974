"""Checks of a database file that must hold whatever happened: counts agree with rows."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

_CHECK = """
SELECT b.id, b.processing_status, b.total, b.succeeded, b.errored, b.canceled, b.expired,
       count(r.id),
       sum(r.state = 'succeeded'), sum(r.state = 'errored'),
       sum(r.state = 'canceled'), sum(r.state = 'expired'),
       sum(r.state IN ('queued', 'running'))
FROM batches b LEFT JOIN requests r ON r.batch_seq = b.seq
GROUP BY b.seq
"""


def count_mismatches(db: Path) -> list[str]:
    """Every batch whose counters disagree with its rows, or that ended with work left."""
    problems = []
    with closing(sqlite3.connect(db)) as conn:
        for row in conn.execute(_CHECK):
            batch_id, status, total, *counters = row[:7]
            rows, *by_state = (value or 0 for value in row[7:12])
            unfinished = row[12] or 0
            if (total, *counters) != (rows, *by_state):
                problems.append(
                    f"{batch_id}: counters {(total, *counters)} rows {(rows, *by_state)}"
                )
            if status == "ended" and unfinished:
                problems.append(f"{batch_id}: ended with {unfinished} unfinished requests")
    return problems
