"""/v1/messages/batches: create, list, retrieve, cancel, delete, results.

batchd's own, beside them: ``Idempotency-Key`` on a create, ``?partial=true`` results with
a cursor, ``POST .../{id}/retry`` and ``GET .../{id}/details``.
"""

from __future__ import annotations

import os
import signal
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import StreamingResponse

from batchd.api.deps import CallerDep, ServicesDep, WorkspaceDep, origin
from batchd.api.responses import JSON
from batchd.api.routes.body import read_body
from batchd.domain import Batch
from batchd.errors import InvalidRequest
from batchd.schedule import PRIORITY_HEADER, WINDOW_HEADER, parse_schedule
from batchd.schemas.batches import (
    BatchDetails,
    DeletedMessageBatch,
    MessageBatch,
    batch_to_wire,
    page_to_wire,
    schedule_to_wire,
)
from batchd.validation import parse_retry_body

RESULTS_CURSOR = "batchd-results-cursor"  # the response header naming a partial read's end

router = APIRouter(prefix="/v1/messages/batches", tags=["message batches"])


def _wire(request: Request, services: ServicesDep, batch: Batch) -> MessageBatch:
    settings = services.settings
    return batch_to_wire(
        batch,
        origin=origin(request, settings),
        retention=settings.results_retention_seconds,
        now=services.clock(),
    )


@router.post("")
async def create_batch(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    settings = services.settings
    headers = request.headers
    schedule = parse_schedule(headers.get(PRIORITY_HEADER), headers.get(WINDOW_HEADER))
    with services.bodies.upload(caller), services.bodies.holding(caller) as held:
        body = await read_body(request, settings, held, settings.max_body_bytes)
        key = headers.get("idempotency-key")
        batch = await services.batches.create(caller.workspace, body, schedule, key)
    if settings.fault_kill_after_create:  # tests only: the answer of a committed create lost
        os.kill(os.getpid(), signal.SIGKILL)
    return JSON(_wire(request, services, batch))


def _plain_query(request: Request) -> None:
    """Each cursor or limit at most once, and limit in plain digits: FastAPI would take the
    last of repeated values, and int() reads "2\u00a0" or "+2" as 2."""
    for name in ("limit", "after_id", "before_id"):
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise InvalidRequest(f"{name}: given {len(values)} times; give it once")
    limit = request.query_params.get("limit")
    if limit is not None and not (limit.isascii() and limit.isdigit()):
        raise InvalidRequest(f"limit: {limit!r} is not a whole number")


@router.get("", dependencies=[Depends(_plain_query)])
async def list_batches(
    request: Request,
    services: ServicesDep,
    workspace: WorkspaceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> JSON:
    batches, has_more = await services.batches.list(workspace, limit, after_id, before_id)
    return JSON(page_to_wire([_wire(request, services, b) for b in batches], has_more))


@router.get("/{batch_id}")
async def retrieve_batch(
    batch_id: str, request: Request, services: ServicesDep, workspace: WorkspaceDep
) -> JSON:
    batch = await services.batches.get(workspace, batch_id)
    return JSON(_wire(request, services, batch))


@router.get("/{batch_id}/schedule")
async def batch_schedule(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    """batchd's own: the batch's priority and deadline, and whether it will miss it."""
    batch = await services.batches.get(workspace, batch_id)
    return JSON(schedule_to_wire(batch, services.clock()))


@router.post("/{batch_id}/cancel")
async def cancel_batch(
    batch_id: str, request: Request, services: ServicesDep, workspace: WorkspaceDep
) -> JSON:
    batch = await services.batches.cancel(workspace, batch_id)
    return JSON(_wire(request, services, batch))


@router.delete("/{batch_id}")
async def delete_batch(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    await services.batches.delete(workspace, batch_id)
    return JSON(DeletedMessageBatch(batch_id))


@router.post("/{batch_id}/retry")
async def retry_batch(
    batch_id: str, request: Request, services: ServicesDep, caller: CallerDep
) -> JSON:
    settings = services.settings
    with services.bodies.holding(caller) as held:
        body = await read_body(request, settings, held, settings.max_message_body_bytes)
    types = parse_retry_body(body)
    batch = await services.batches.retry(caller.workspace, batch_id, types)
    return JSON(_wire(request, services, batch))


@router.get("/{batch_id}/details")
async def batch_details(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    batch, retried_by = await services.batches.lineage(workspace, batch_id)
    return JSON(BatchDetails(batch.id, batch.retry_of, retried_by, batch.reused))


@router.get("/{batch_id}/results")
async def batch_results(
    batch_id: str,
    services: ServicesDep,
    workspace: WorkspaceDep,
    partial: bool = False,
    after: Annotated[str | None, Query(pattern="^[0-9]{1,18}$")] = None,
) -> StreamingResponse:
    """The results of an ended batch; with ``partial=true`` (batchd's own), those recorded
    so far in any status, after the cursor ``after`` if given, and in the header
    ``batchd-results-cursor`` the cursor to read on from."""
    if not partial:
        chunks = await services.batches.results(workspace, batch_id)
        if after is not None:
            raise InvalidRequest("after: a results cursor goes with partial=true")
        return StreamingResponse(chunks, media_type="application/x-jsonl")
    start = None if after is None else int(after)
    cursor, chunks = await services.batches.recorded_results(workspace, batch_id, start)
    headers = {RESULTS_CURSOR: str(cursor)}
    return StreamingResponse(chunks, media_type="application/x-jsonl", headers=headers)
