"""Reading results: merged over batches in order, filtered by type, summarised for tables;
followed while batches run, and merged over a chain of retries (batchd's own extensions)."""

from __future__ import annotations

import asyncio
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


def _custom_id(line: bytes) -> str:
    return _decode_line(line).custom_id


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


class Follower:
    """Writes each batch's result lines to ``out`` as they are recorded (``?partial=true``
    and its cursor), none twice."""

    def __init__(
        self,
        client: BatchdClient,
        batch_ids: Sequence[str],
        out: IO[bytes],
        only: Collection[str] = (),
    ) -> None:
        self._client = client
        self._cursors: dict[str, str | None] = dict.fromkeys(batch_ids)
        self._out = out
        self._only = only
        self.written: Counter[str] = Counter()

    async def pull(self) -> None:
        """Write what each batch recorded since the last pull."""
        for batch_id, after in self._cursors.items():
            async with self._client.recorded(batch_id, after) as (cursor, lines):
                async for line in lines:
                    kind = result_type(line)
                    if not self._only or kind in self._only:
                        self._out.write(line + b"\n")
                        self.written[kind] += 1
            self._cursors[batch_id] = cursor
        self._out.flush()


async def follow(follower: Follower, client: BatchdClient, batch_id: str, interval: float) -> None:
    """Pull until the batch has ended (the pull after it ended has every result)."""
    while True:
        ended = (await client.retrieve(batch_id))["processing_status"] == "ended"
        await follower.pull()
        if ended:
            return
        await asyncio.sleep(interval)


async def retry_chain(client: BatchdClient, batch_id: str) -> list[str]:
    """Every batch of the retry chain (a tree) that ``batch_id`` is part of, oldest first."""
    root = batch_id
    while (up := (await client.details(root))["retry_of"]) is not None:
        root = up
    chain, waiting = [], [root]
    while waiting:
        current = waiting.pop()
        chain.append(current)
        waiting += (await client.details(current))["retried_by"]
    return sorted(chain)  # batch ids sort by creation time


async def latest(
    client: BatchdClient, batch_ids: Sequence[str], only: Collection[str] = ()
) -> AsyncIterator[bytes]:
    """Each custom_id's result from the last of ``batch_ids`` (oldest first) that has it,
    once, in the order the custom_ids first appear."""
    lines: dict[str, bytes] = {}
    for batch_id in batch_ids:
        async for line in client.results(batch_id):
            lines[_custom_id(line)] = line
    for line in lines.values():
        if not only or result_type(line) in only:
            yield line


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
