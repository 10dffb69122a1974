"""/v1/batches (the OpenAI face): create, list, retrieve, cancel.

batchd's own, beside them: ``Idempotency-Key`` on a create, and ``GET .../{id}/output``
(``?partial=true``): the output and error lines recorded so far, with a cursor.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from batchd.api.deps import CallerDep, ServicesDep, WorkspaceDep
from batchd.api.responses import JSON
from batchd.api.routes.batches import RESULTS_CURSOR
from batchd.api.routes.body import read_body
from batchd.schemas.openai import BatchPage
from batchd.schemas.openai_batch import batch_to_wire

router = APIRouter(prefix="/v1/batches", tags=["batches (OpenAI)"])


@router.post("")
async def create_batch(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    settings = services.settings
    with services.bodies.holding(caller) as held:
        body = await read_body(request, settings, held, settings.max_message_body_bytes)
    key = request.headers.get("idempotency-key")
    batch = await services.openai_batches.create(caller.workspace, body, key)
    return JSON(batch_to_wire(batch))


@router.get("")
async def list_batches(
    services: ServicesDep,
    workspace: WorkspaceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JSON:
    batches, has_more = await services.openai_batches.list(workspace, limit, after)
    data = [batch_to_wire(b) for b in batches]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return JSON(BatchPage(data, first, last, has_more))


@router.get("/{batch_id}")
async def retrieve_batch(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    return JSON(batch_to_wire(await services.openai_batches.get(workspace, batch_id)))


@router.post("/{batch_id}/cancel")
async def cancel_batch(batch_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    return JSON(batch_to_wire(await services.openai_batches.cancel(workspace, batch_id)))


@router.get("/{batch_id}/output")
async def batch_output(
    batch_id: str,
    services: ServicesDep,
    workspace: WorkspaceDep,
    after: Annotated[str | None, Query(pattern="^[0-9]{1,18}$")] = None,
) -> StreamingResponse:
    """batchd's own: the output and error lines recorded so far in any status (a partial
    read: ``?partial=true`` may say so), after the cursor ``after`` if given, and in the
    header ``batchd-results-cursor`` the cursor to read on from. The finished output and
    error files are the batch's ``output_file_id`` and ``error_file_id``."""
    start = None if after is None else int(after)
    cursor, chunks = await services.openai_batches.recorded_output(workspace, batch_id, start)
    headers = {RESULTS_CURSOR: str(cursor)}
    return StreamingResponse(chunks, media_type="application/x-jsonl", headers=headers)
