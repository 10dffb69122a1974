"""Submitting a file of OpenAI batch lines (``{"custom_id", "method", "url", "body"}``).

``batchd submit`` reads a file in this shape when its first line has ``url`` and ``body``
(``inputs.is_openai_file``). Its lines are uploaded through the Files API and run as one
OpenAI batch per ``url`` (a ``vllm run-batch`` file mixes chat and embeddings lines; OpenAI
takes one endpoint per batch), and the results are written in OpenAI's output format: the
output and error files' lines, in the order of the input file.
"""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console

from batchd.client.errors import BadInput, ClientError
from batchd.client.http import BatchdClient

FINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(slots=True)
class OpenAIFile:
    """The file's lines by endpoint (as sent), and the custom_ids in file order."""

    by_endpoint: dict[str, list[bytes]] = field(default_factory=dict)
    custom_ids: list[str] = field(default_factory=list)


def read_openai_file(path: Path) -> OpenAIFile:
    found = OpenAIFile()
    seen: dict[str, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise BadInput(str(path), 0, exc.strerror or str(exc)) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise BadInput(str(path), number, f"invalid JSON ({exc})") from None
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise BadInput(str(path), number, 'expected {"custom_id", "method", "url", "body"}')
        url, custom_id = value["url"], value.get("custom_id")
        if not isinstance(custom_id, str):
            raise BadInput(str(path), number, "no custom_id (a string)")
        if custom_id in seen:
            problem = f"custom_id {custom_id!r} is already used on line {seen[custom_id]}"
            raise BadInput(str(path), number, problem)
        seen[custom_id] = number
        found.by_endpoint.setdefault(url, []).append(line)
        found.custom_ids.append(custom_id)
    if not found.custom_ids:
        raise BadInput(str(path), 0, "no requests: the file is empty")
    return found


async def create(client: BatchdClient, found: OpenAIFile, name: str) -> list[dict[str, Any]]:
    """Upload the lines of each endpoint and create its batch (each create with its own
    Idempotency-Key, so that one sent again after a dropped connection makes one batch)."""
    created = []
    run = uuid.uuid4().hex
    for endpoint, lines in found.by_endpoint.items():
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", io.BytesIO(b"\n".join(lines) + b"\n"), filename=name)
        file = await client.call("POST", "/v1/files", data=form)
        body = {"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"}
        key = f"batchd-submit-{run}-{endpoint}"
        created.append(await client.call("POST", "/v1/batches", key, json=body))
    return created


async def wait(
    client: BatchdClient, batch_ids: Sequence[str], err: Console, interval: float
) -> list[dict[str, Any]]:
    """Poll until every batch is final, saying how far each has come."""
    last = ""
    while True:
        batches = [await client.call("GET", f"/v1/batches/{b}") for b in batch_ids]
        said = ", ".join(
            f"{b['id']} {b['status']} {b['request_counts']['completed']}/"
            f"{b['request_counts']['total']}"
            for b in batches
        )
        if said != last:
            err.print(said, markup=False, highlight=False)
            last = said
        if all(b["status"] in FINAL for b in batches):
            return batches
        await asyncio.sleep(interval)


async def results(
    client: BatchdClient, batches: Sequence[dict[str, Any]], custom_ids: Sequence[str]
) -> tuple[list[bytes], dict[str, int]]:
    """Every output and error line, in input order; and how many of each kind."""
    by_id: dict[str, bytes] = {}
    counts = {"succeeded": 0, "failed": 0}
    for batch in batches:
        if batch["status"] == "failed":
            errors = "; ".join(
                f"line {e['line']}: {e['code']}: {e['message']}" for e in batch["errors"]["data"]
            )
            raise ClientError(f"batch {batch['id']} failed at validation: {errors}")
        for key, kind in (("output_file_id", "succeeded"), ("error_file_id", "failed")):
            if batch[key] is None:
                continue
            content = await client.content(f"/v1/files/{batch[key]}/content")
            for line in content.splitlines():
                by_id[msgspec.json.decode(line)["custom_id"]] = line
                counts[kind] += 1
    return [by_id[c] for c in custom_ids if c in by_id], counts


def write(lines: list[bytes], out: Path | None) -> None:
    data = b"".join(line + b"\n" for line in lines)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(data)
    partial.replace(out)
