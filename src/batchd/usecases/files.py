"""File use cases of the OpenAI face: upload, retrieve, list, content, delete. No HTTP, no SQL.

An upload's bytes are stored in chunks as they came. A batch's output and error files hold
no bytes of their own: their lines are rendered from the batch's requests when read (the
stored result lines, and a line for each request that never ran), and their size is
measured the first time they are read after the batch has ended.

A file past its ``expires_at`` is gone, as OpenAI's: 404, not listed, and the engine's
purger deletes it (an upload's bytes; an output or error file's rows, and the batch's
requests once its files are all gone). An output or error file is made (``created_at``)
when its batch ends and lives the batch's ``output_expires_after`` (30 days by default) from
then, never longer than the batch's results (``results_retention_seconds`` from its
creation).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from batchd.domain import FileRole, RequestState, StoredFile
from batchd.errors import InvalidRequest, NotFound, RequestTooLarge
from batchd.ids import new_file_id, unrun_request_id
from batchd.schemas.openai import (
    CANCELLED_MESSAGE,
    EXPIRED_MESSAGE,
    FileObject,
    unrun_line,
)
from batchd.store import NewFile, Store

CHUNK_BYTES = 4 * 1024 * 1024  # an upload is stored in pieces of this size
FILE_EXPIRY_SECONDS = 30 * 24 * 3600.0  # purpose "batch": "expire after 30 days" (OpenAI)
RESULTS_PAGE = 500
PURPOSES = ("batch",)  # what files are for here: batch input only


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_bytes: int
    max_lines: int


@dataclass(frozen=True, slots=True)
class Upload:
    """An uploaded file spooled to disk by the HTTP layer, measured on the way."""

    data: BinaryIO
    size: int
    lines: int  # newline-terminated lines, and a last one without a newline


def not_found(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", param="file_id")


def _chunks(data: BinaryIO) -> Iterator[bytes]:
    data.seek(0)
    while chunk := data.read(CHUNK_BYTES):
        yield chunk


def file_to_wire(file: StoredFile) -> FileObject:
    assert file.bytes is not None  # measured before it is shown
    purpose = "batch" if file.role is FileRole.UPLOAD else "batch_output"
    expires = None if file.expires_at is None else int(file.expires_at)
    return FileObject(
        file.id, file.bytes, int(file.created_at), file.filename, purpose, "processed", expires
    )


class FileService:
    def __init__(self, store: Store, limits: FileLimits, clock: Callable[[], float]) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock

    async def upload(
        self,
        workspace: str,
        purpose: str,
        filename: str,
        upload: Upload,
        expires_after: float | None,
    ) -> StoredFile:
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose: {purpose!r} is not accepted here; files are for batches: 'batch'",
                param="purpose",
            )
        if upload.size > self._limits.max_bytes:
            raise RequestTooLarge(
                f"file: {upload.size} bytes; a batch input file may have at most "
                f"{self._limits.max_bytes} bytes",
            )
        if upload.lines > self._limits.max_lines:
            raise InvalidRequest(
                f"file: {upload.lines} lines; a batch input file may have at most "
                f"{self._limits.max_lines} lines",
                param="file",
            )
        now = self._clock()
        lifetime = FILE_EXPIRY_SECONDS if expires_after is None else expires_after
        file = NewFile(
            new_file_id(), workspace, purpose, filename, now, now + lifetime, FileRole.UPLOAD,
            upload.size, upload.lines,
        )  # fmt: skip
        return await self._store.create_file(file, _chunks(upload.data))

    async def find(self, workspace: str, file_id: str) -> StoredFile:
        """A visible file, measured."""
        file = await self._store.get_file(workspace, file_id)
        if file is None or not file.visible(self._clock()):
            raise not_found(file_id)
        return await self._measured(file)

    async def list(
        self,
        workspace: str,
        *,
        purpose: str | None,
        limit: int,
        after: str | None,
        newest_first: bool,
    ) -> tuple[list[StoredFile], bool]:
        page = await self._store.list_files(
            workspace, limit, after, purpose=purpose, newest_first=newest_first, now=self._clock()
        )
        if page is None:
            raise not_found(after or "")
        files, has_more = page
        return [await self._measured(f) for f in files], has_more

    async def delete(self, workspace: str, file_id: str) -> None:
        if not await self._store.delete_file(workspace, file_id, self._clock()):
            raise not_found(file_id)

    async def content(self, workspace: str, file_id: str) -> AsyncIterator[bytes]:
        file = await self.find(workspace, file_id)
        return self._content(file)

    def _content(self, file: StoredFile) -> AsyncIterator[bytes]:
        if file.role is FileRole.UPLOAD:
            return self._store.file_chunks(file.seq)
        assert file.batch_seq is not None
        return self._rendered(file.batch_seq, file.role)

    async def _rendered(self, batch_seq: int, role: FileRole) -> AsyncIterator[bytes]:
        async for page in self._store.iter_results(batch_seq, RESULTS_PAGE):
            lines = [
                _line(batch_seq, custom_id, state, result, role)
                for _, custom_id, state, result in page
            ]
            yield b"".join(line for line in lines if line)

    async def _measured(self, file: StoredFile) -> StoredFile:
        """The file with its size, measured (and kept) the first time it is asked for."""
        if file.bytes is not None:
            return file
        size = lines = 0
        async for chunk in self._content(file):
            size += len(chunk)
            lines += chunk.count(b"\n")
        await self._store.measure_file(file.seq, size, lines)
        return replace(file, bytes=size, lines=lines)


def _line(
    batch_seq: int, custom_id: str, state: str, result: bytes | None, role: FileRole
) -> bytes:
    """The line of one request in an output or error file; empty where it has none there.
    A stored result line is given as it was recorded; the line of a request that never ran
    is made here, its id derived from the batch and custom_id (the same on every read)."""
    if role is FileRole.OUTPUT:
        return result + b"\n" if state == RequestState.SUCCEEDED and result is not None else b""
    if state == RequestState.ERRORED and result is not None:
        return result + b"\n"
    if state == RequestState.CANCELED:
        code, message = "batch_cancelled", CANCELLED_MESSAGE
    elif state == RequestState.EXPIRED:
        code, message = "batch_expired", EXPIRED_MESSAGE
    else:
        return b""
    return unrun_line(unrun_request_id(batch_seq, custom_id), custom_id, code, message) + b"\n"


def result_line(batch_seq: int, custom_id: str, state: str, result: bytes | None) -> bytes:
    """A request's line of the output file, or else of the error file (empty: neither yet)."""
    return _line(batch_seq, custom_id, state, result, FileRole.OUTPUT) or _line(
        batch_seq, custom_id, state, result, FileRole.ERROR
    )
