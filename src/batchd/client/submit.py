"""Submitting a request file as one or more batches (more than 100,000 requests: several)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from batchd.client.errors import ClientError
from batchd.client.http import Batch, BatchdClient
from batchd.client.inputs import Requests, chunks

MAX_REQUESTS = 100_000  # the API's limit per batch
MAX_BYTES = 192 * 2**20  # below the server's default 256 MiB body limit


async def submit(
    client: BatchdClient,
    requests: Requests,
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    headers: Mapping[str, str] | None = None,
) -> list[Batch]:
    """Create the batches in input order (each with ``headers``: batchd's own priority and
    completion window); a failure names the batches already created. Each create has its
    own Idempotency-Key, so that one sent again after a dropped connection never makes two
    batches."""
    created: list[Batch] = []
    run = uuid.uuid4().hex
    for index, chunk in enumerate(chunks(requests, max_requests, max_bytes)):
        try:
            key = f"batchd-submit-{run}-{index}"
            created.append(await client.create(chunk, key, headers))
        except ClientError as exc:
            if not created:
                raise
            running = " ".join(batch["id"] for batch in created)
            partial = ClientError(f"{exc.message} (already created and running: {running})")
            partial.exit_code = exc.exit_code
            raise partial from exc
    return created
