"""Batch use cases of the OpenAI face: create, retrieve, list, cancel. No HTTP, no SQL.

An OpenAI batch is a batch of the one engine whose dialect is ``openai``: its requests are
claimed, leased, retried, expired and cancelled as every other, and the engine writes their
results in OpenAI's output format. The input file is validated inside the create call
(``validating`` is passed before it answers): a bad file gives a batch that has ``failed``
with ``errors`` naming each bad line, nothing run; a good one is ``in_progress`` at once.

The batch object and its status are built in ``batchd.schemas.openai_batch``, which the
webhook outbox uses too.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from batchd.backends.base import OPENAI_CHAT
from batchd.domain import BatchDialect, CancelOutcome, FileRole, RequestState
from batchd.errors import InvalidRequest, NotFound
from batchd.ids import new_file_id, new_openai_batch_id
from batchd.openai_input import InputReader, InputRequest
from batchd.schedule import Schedule
from batchd.schemas.openai import BatchFields, CreateBatch, refused_line
from batchd.schemas.openai_batch import OpenAIBatch, openai_status, with_fields
from batchd.store import NewFile, NewRequest
from batchd.store.store import ResultRecord
from batchd.usecases.batches import (
    BatchServiceBase,
    idempotency_claim,
    queued_input_tokens,
    recorded_pages,
)
from batchd.usecases.files import FILE_EXPIRY_SECONDS, result_line
from batchd.usecases.files import not_found as file_not_found

_create_decoder = msgspec.json.Decoder(CreateBatch)
_body_decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_URL_KEY = re.compile(rb'"url"')  # searched in the body's buffer, not copied
_FACE = b"openai\n"  # an Idempotency-Key's digest of an OpenAI create starts with it


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", code="batch_not_found")


def _parse_create(body: bytes | bytearray) -> CreateBatch:
    try:
        return _create_decoder.decode(body)
    except msgspec.ValidationError as exc:
        # "... - at `$.output_expires_after.seconds`" names the parameter at fault
        param = str(exc).rpartition("at `$.")[2].rstrip("`") if "at `$." in str(exc) else None
        raise InvalidRequest(f"invalid request body: {exc}", param=param) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None


class OpenAIBatchService(BatchServiceBase):
    async def create(
        self, workspace: str, body: bytes | bytearray, idempotency_key: str | None = None
    ) -> OpenAIBatch:
        """A new batch of the input file's lines; with ``idempotency_key`` (batchd's own),
        the batch the same key and body made within 24 hours if there is one (400 if that
        key came with another body), as on the Anthropic face."""
        now = self._clock()
        idempotency = idempotency_claim(idempotency_key, body, now, Schedule(), _FACE)
        create = _parse_create(body)
        file = await self._store.get_file(workspace, create.input_file_id)
        if file is None or file.role is not FileRole.UPLOAD or not file.visible(now):
            raise file_not_found(create.input_file_id)
        reader = InputReader(create.endpoint, self._router.route, self._limits.max_requests)
        async for chunk in self._store.file_chunks(file.seq):
            reader.feed(chunk)
        errors = reader.finish()
        models = {r.model for r in reader.requests}
        fields = BatchFields(
            endpoint=create.endpoint,
            input_file_id=create.input_file_id,
            completion_window=create.completion_window,
            output_file_id=new_file_id(),
            error_file_id=new_file_id(),
            metadata=create.metadata,
            model=models.pop() if len(models) == 1 else None,
            errors=errors or None,
        )
        requests = [] if errors else reader.requests
        rows = [self._row(r, create.endpoint) for r in requests]
        lifetime = (
            create.output_expires_after.seconds
            if create.output_expires_after is not None
            else FILE_EXPIRY_SECONDS
        )
        most = now + self._limits.retention_seconds  # they live no longer than the results
        files = [
            NewFile(file_id, workspace, "batch_output", name, now, most, role, None, 0, lifetime)
            for file_id, name, role in (
                (fields.output_file_id, "batch_output.jsonl", FileRole.OUTPUT),
                (fields.error_file_id, "batch_errors.jsonl", FileRole.ERROR),
            )
        ]
        queued, tokens = queued_input_tokens(rows)
        batch = await self._store.create_batch(
            new_openai_batch_id(),
            workspace,
            now,
            now + self._limits.ttl_seconds,
            rows,
            self._limits.backlog_check(queued, tokens),
            input_tokens=tokens,
            dialect=BatchDialect.OPENAI,
            dialect_fields=msgspec.json.encode(fields),
            files=[] if errors else files,
            idempotency=idempotency,
        )
        self._on_created()
        # with_fields: an Idempotency-Key's earlier batch has its own fields
        return with_fields(batch)

    def _row(self, request: InputRequest, endpoint: str) -> NewRequest:
        """A line's request, queued; or already refused (the error file's 400 line) when its
        chat body names a media URL its backend may not fetch (the URL policy of the
        synchronous routes). Only a body that has a ``"url"`` key is decoded to look."""
        if endpoint == OPENAI_CHAT and _URL_KEY.search(request.body):
            try:
                body = _body_decoder.decode(request.body)
                self._router.check_chat_urls(request.backend, body)
            except (InvalidRequest, msgspec.DecodeError) as exc:
                error = exc if isinstance(exc, InvalidRequest) else InvalidRequest(str(exc))
                line = refused_line(request.custom_id, error)
                return NewRequest(
                    request.custom_id,
                    None,
                    request.body,
                    RequestState.ERRORED,
                    line,
                    endpoint=endpoint,
                )
        return NewRequest(
            request.custom_id, request.backend, request.body, RequestState.QUEUED, endpoint=endpoint
        )

    async def recorded_output(
        self, workspace: str, batch_id: str, after: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        """batchd's own: the output and error lines recorded so far (after the cursor
        ``after``, if given), in any status, in the order they were recorded, and the cursor
        that reads on from them. The output and error files are written at the end."""
        found = await self.get(workspace, batch_id)
        upto, pages = await recorded_pages(self._store, found.batch.seq, after)
        return upto, _openai_lines(found.batch.seq, pages)

    async def get(self, workspace: str, batch_id: str) -> OpenAIBatch:
        batch = await self._store.get_batch(workspace, batch_id)
        if batch is None or batch.dialect is not BatchDialect.OPENAI:
            raise _not_found(batch_id)
        return with_fields(batch)

    async def list(
        self, workspace: str, limit: int, after: str | None
    ) -> tuple[list[OpenAIBatch], bool]:
        page = await self._store.list_batches(
            workspace, limit, after, None, dialect=BatchDialect.OPENAI
        )
        if page is None:
            raise _not_found(after or "")
        batches, has_more = page
        return [with_fields(b) for b in batches], has_more

    async def cancel(self, workspace: str, batch_id: str) -> OpenAIBatch:
        found = await self._store.cancel_batch(
            workspace, batch_id, self._clock(), BatchDialect.OPENAI
        )
        if found is None:
            raise _not_found(batch_id)
        batch, outcome = found
        if outcome is CancelOutcome.ALREADY_ENDED:
            status = openai_status(with_fields(batch))
            if status not in ("cancelled", "cancelling"):
                raise InvalidRequest(
                    f"Cannot cancel a batch with status '{status}'.", code="batch_not_cancellable"
                )
        return with_fields(batch)


async def _openai_lines(
    batch_seq: int, pages: AsyncIterator[list[ResultRecord]]
) -> AsyncIterator[bytes]:
    """Each recorded request's line of the output file or of the error file."""
    async for page in pages:
        yield b"".join([result_line(batch_seq, c, state, result) for _, c, state, result in page])
