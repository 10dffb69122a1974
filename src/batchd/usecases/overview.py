"""What operators look at beyond the Batches API: a batch's first errors, its results page
by page (also while it runs), one result, server-wide figures.

The console reads these while a batch still runs (the Batches API opens results only once
it has ended); ``/metrics`` reads the figures the database holds at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import msgspec

from batchd.domain import FINAL_STATES, Batch
from batchd.errors import InvalidRequest, NotFound
from batchd.store import RequestFigures, Store
from batchd.store.store import ResultRecord

SUMMARY_CHARACTERS = 160
RESULT_TYPES = frozenset(s.value for s in FINAL_STATES)


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


class _Response(msgspec.Struct):  # an OpenAI error-file line's response
    body: _Envelope = msgspec.field(default_factory=_Envelope)


class _Line(msgspec.Struct):
    result: _Result | None = None  # a Message Batches result line
    response: _Response | None = None  # an OpenAI output or error line


_decode_line = msgspec.json.Decoder(_Line).decode


def summarize_error(custom_id: str, line: bytes | None) -> ErrorSummary:
    """The error type and message of one errored result line, of either face."""
    if line is None:
        return ErrorSummary(custom_id, "api_error", "no result recorded")
    try:
        decoded = _decode_line(line)
    except msgspec.DecodeError:
        return ErrorSummary(custom_id, "api_error", "unreadable result line")
    if decoded.response is not None:
        error = decoded.response.body.error
    else:
        error = (decoded.result or _Result()).error.error
    return ErrorSummary(custom_id, error.type, error.message)


@dataclass(frozen=True, slots=True)
class ResultSummary:
    custom_id: str
    type: str
    summary: str  # the answer's text (tool calls by name), or the error; shortened


@dataclass(frozen=True, slots=True)
class ResultsPage:
    data: list[ResultSummary]
    next_after: int | None  # the cursor of the next page; None on the last


_decode_any: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _result_of(record: ResultRecord) -> dict[str, Any]:
    """The ``result`` object of a final request: its stored line, or made for one that has
    none (canceled, expired)."""
    line = record[3]
    if line is None:
        return {"type": record[2]}
    result: dict[str, Any] = _decode_any.decode(line)["result"]
    return result


def _summary(result: dict[str, Any]) -> str:
    if result["type"] == "succeeded":
        parts = [
            block.get("text", "")
            if block.get("type") == "text"
            else f"[{block.get('type')} {block.get('name', '')}]".replace(" ]", "]")
            for block in result["message"].get("content", [])
        ]
        text = " ".join(parts)
    elif result["type"] == "errored":
        error = result.get("error", {}).get("error", {})
        text = f"{error.get('type', '')}: {error.get('message', '')}"
    else:
        text = ""
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARACTERS else text[: SUMMARY_CHARACTERS - 1] + "…"


class Overview:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _batch(self, workspace: str, batch_id: str) -> Batch:
        batch = await self._store.get_batch(workspace, batch_id)  # of either face
        if batch is None:
            raise NotFound(f"message batch {batch_id!r} not found")
        return batch

    async def first_errors(self, workspace: str, batch_id: str, limit: int) -> list[ErrorSummary]:
        """The first errored requests of a batch this workspace owns (404 otherwise)."""
        batch = await self._batch(workspace, batch_id)
        rows = await self._store.errored_results(batch.seq, limit)
        return [summarize_error(row.custom_id, row.result) for row in rows]

    async def results(
        self,
        workspace: str,
        batch_id: str,
        *,
        result_type: str = "",
        custom_id: str = "",
        after: int = 0,
        limit: int = 50,
    ) -> ResultsPage:
        """A page of the batch's final results in request order, in any status: of one type
        ('' for any), whose custom_id starts with ``custom_id``."""
        if result_type and result_type not in RESULT_TYPES:
            raise InvalidRequest(f"type: {result_type!r} is not a result type")
        batch = await self._batch(workspace, batch_id)
        rows = await self._store.results_page(
            batch.seq, after=after, limit=limit, state=result_type, prefix=custom_id
        )
        data = [ResultSummary(r[1], r[2], _summary(_result_of(r))) for r in rows]
        return ResultsPage(data, rows[-1][0] if len(rows) == limit else None)

    async def result(self, workspace: str, batch_id: str, custom_id: str) -> dict[str, Any]:
        """One request's final result line, as an object (404 when it has none yet)."""
        batch = await self._batch(workspace, batch_id)
        record = await self._store.request_result(batch.seq, custom_id)
        if record is None:
            raise NotFound(f"no result for custom_id {custom_id!r} in {batch_id!r} (yet)")
        return {"custom_id": record[1], "result": _result_of(record)}

    async def figures(self, now: float | None = None) -> RequestFigures:
        """The database's figures; with ``now``, the batches at risk of missing their
        deadline too."""
        figures = await self._store.request_figures()
        if now is None:
            return figures
        unfinished = await self._store.unfinished_batches()
        return replace(
            figures,
            at_risk=sum(batch.at_risk(now) for batch in unfinished),
            fleet_slots=await self._store.fleet_slots_held(now),
        )
