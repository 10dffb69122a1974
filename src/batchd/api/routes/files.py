"""/v1/files (the OpenAI face): upload, list, retrieve, content, delete."""

from __future__ import annotations

import tempfile
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from batchd.api.deps import CallerDep, ServicesDep, WorkspaceDep
from batchd.api.multipart import boundary_of, read_form
from batchd.api.responses import JSON
from batchd.errors import InvalidRequest
from batchd.schemas.openai import FileDeleted, FilePage
from batchd.usecases.files import Upload, file_to_wire

router = APIRouter(prefix="/v1/files", tags=["files"])


def _expires_after(fields: dict[str, str]) -> float | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor not in (None, "created_at"):
        raise InvalidRequest("expires_after.anchor: only 'created_at'", param="expires_after")
    if seconds is None:
        return None  # the default lifetime
    if not seconds.isdigit():
        raise InvalidRequest("expires_after.seconds: whole seconds", param="expires_after.seconds")
    if not 3600 <= int(seconds) <= 2_592_000:
        raise InvalidRequest(
            "expires_after.seconds: between 3600 and 2592000", param="expires_after.seconds"
        )
    return float(seconds)


@router.post("")
async def upload_file(request: Request, services: ServicesDep, caller: CallerDep) -> JSON:
    settings = services.settings
    boundary = boundary_of(request.headers.get("content-type", ""))
    with services.bodies.upload(caller), tempfile.TemporaryFile() as spool:
        form = await read_form(
            request.stream(),
            boundary,
            spool,
            max_file_bytes=settings.max_file_bytes,
            idle_timeout=settings.body_idle_timeout_seconds,
        )
        if form.filename is None:
            raise InvalidRequest("file: Field required", param="file")
        purpose = form.fields.get("purpose")
        if purpose is None:
            raise InvalidRequest("purpose: Field required", param="purpose")
        file = await services.files.upload(
            caller.workspace,
            purpose,
            form.filename,
            Upload(spool, form.size, form.lines),
            _expires_after(form.fields),
        )
    return JSON(file_to_wire(file))


@router.get("")
async def list_files(
    services: ServicesDep,
    workspace: WorkspaceDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> JSON:
    files, has_more = await services.files.list(
        workspace, purpose=purpose, limit=limit, after=after, newest_first=order == "desc"
    )
    data = [file_to_wire(f) for f in files]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return JSON(FilePage(data, first, last, has_more))


@router.get("/{file_id}")
async def retrieve_file(file_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    return JSON(file_to_wire(await services.files.find(workspace, file_id)))


@router.delete("/{file_id}")
async def delete_file(file_id: str, services: ServicesDep, workspace: WorkspaceDep) -> JSON:
    await services.files.delete(workspace, file_id)
    return JSON(FileDeleted(file_id, True))


@router.get("/{file_id}/content")
async def file_content(
    file_id: str, services: ServicesDep, workspace: WorkspaceDep
) -> StreamingResponse:
    chunks = await services.files.content(workspace, file_id)
    return StreamingResponse(chunks, media_type="application/octet-stream")
