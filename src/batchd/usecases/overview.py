"""What operators look at beyond the Batches API: a batch's first errors, server-wide figures.

The console reads the first errors of a batch while it still runs (results only open once
it has ended); ``/metrics`` reads the figures the database holds at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import msgspec

from batchd.errors import NotFound
from batchd.store import RequestFigures, Store


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    custom_id: str
    error_type: str
    message: str


class _Error(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _Envelope(msgspec.Struct):
    error: _Error = msgspec.field(default_factory=_Error)


class _Result(msgspec.Struct):
    error: _Envelope = msgspec.field(default_factory=_Envelope)


class _Line(msgspec.Struct):
    result: _Result = msgspec.field(default_factory=_Result)


_decode_line = msgspec.json.Decoder(_Line).decode


def summarize_error(custom_id: str, line: bytes | None) -> ErrorSummary:
    """The error type and message of one errored result line."""
    if line is None:
        return ErrorSummary(custom_id, "api_error", "no result recorded")
    try:
        error = _decode_line(line).result.error.error
    except msgspec.DecodeError:
        return ErrorSummary(custom_id, "api_error", "unreadable result line")
    return ErrorSummary(custom_id, error.type, error.message)


class Overview:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def first_errors(self, workspace: str, batch_id: str, limit: int) -> list[ErrorSummary]:
        """The first errored requests of a batch this workspace owns (404 otherwise)."""
        batch = await self._store.get_batch(workspace, batch_id)
        if batch is None:
            raise NotFound(f"message batch {batch_id!r} not found")
        rows = await self._store.errored_results(batch.seq, limit)
        return [summarize_error(row.custom_id, row.result) for row in rows]

    async def figures(self, now: float | None = None) -> RequestFigures:
        """The database's figures; with ``now``, the batches at risk of missing their
        deadline too."""
        figures = await self._store.request_figures()
        if now is None:
            return figures
        unfinished = await self._store.unfinished_batches()
        return replace(figures, at_risk=sum(batch.at_risk(now) for batch in unfinished))
