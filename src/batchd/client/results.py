"""Reading results: merged over batches in order, filtered by type, summarised for tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from typing import IO, Any

import msgspec

from batchd.client.http import BatchdClient

RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")


class _Result(msgspec.Struct):
    type: str


class _Line(msgspec.Struct):
    custom_id: str
    result: _Result


_decode_line = msgspec.json.Decoder(_Line).decode


def result_type(line: bytes) -> str:
    return _decode_line(line).result.type


async def merged(
    client: BatchdClient, batch_ids: Sequence[str], only: Collection[str] = ()
) -> AsyncIterator[bytes]:
    """Every result line of the batches, in order, keeping only the types in ``only``."""
    for batch_id in batch_ids:
        async for line in client.results(batch_id):
            if not only or result_type(line) in only:
                yield line


async def write(
    client: BatchdClient, batch_ids: Sequence[str], out: IO[bytes], only: Collection[str] = ()
) -> Counter[str]:
    """Write JSONL to ``out``; returns how many lines of each type were written."""
    written: Counter[str] = Counter()
    async for line in merged(client, batch_ids, only):
        out.write(line + b"\n")
        written[result_type(line)] += 1
    out.flush()
    return written


def summary(line: bytes, width: int = 100) -> tuple[str, str, str]:
    """(custom_id, type, a short human detail) of one result line."""
    value: dict[str, Any] = msgspec.json.decode(line)
    result = value["result"]
    detail = ""
    if result["type"] == "succeeded":
        blocks = result["message"].get("content", [])
        detail = " ".join(b.get("text", f"[{b.get('type')}]") for b in blocks)
    elif result["type"] == "errored":
        error = result.get("error", {}).get("error", {})
        detail = f"{error.get('type', '')}: {error.get('message', '')}"
    detail = " ".join(detail.split())
    if len(detail) > width:
        detail = detail[: width - 1] + "…"
    return value["custom_id"], result["type"], detail
