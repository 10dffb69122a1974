"""An async HTTP client for the Batches API (aiohttp; the anthropic SDK is not a dependency),
with batchd's own extensions: idempotent creates, results read while a batch runs, retries
of what failed and a batch's details."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec

from batchd.client.errors import ApiError, AuthRefused, ClientError, ServerUnreachable

BATCHES = "/v1/messages/batches"
RESULTS_CURSOR = "batchd-results-cursor"
# A create whose connection dropped is sent again (same Idempotency-Key) for this long.
CREATE_RETRY_SECONDS = 60.0

Batch = dict[str, Any]


def _api_error(status: int, body: bytes) -> ClientError:
    try:
        error = msgspec.json.decode(body)["error"]
        error_type, message = str(error["type"]), str(error["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        error_type = "api_error"
        message = body.decode(errors="replace").strip()[:200] or f"HTTP {status}"
    if status == 401:
        return AuthRefused(
            f"the server refused the API key: {message} (set --api-key or BATCHD_API_KEY)"
        )
    return ApiError(status, error_type, message)


class BatchdClient:
    def __init__(self, url: str, api_key: str | None, *, timeout: float = 600) -> None:
        self.url = url.rstrip("/")
        headers = {"anthropic-version": "2023-06-01", "user-agent": "batchd-cli"}
        if api_key:
            headers["x-api-key"] = api_key
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=timeout),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    async def call(
        self, method: str, path: str, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        """Any route: its JSON answer (the OpenAI face's files and batches); with
        ``idempotency_key``, sent again as ``create`` sends one."""
        if idempotency_key is None:
            return await self._call(method, path, **kwargs)
        headers = {**kwargs.pop("headers", {}), "idempotency-key": idempotency_key}
        return await self._idempotent(method, path, headers=headers, **kwargs)

    async def content(self, path: str) -> bytes:
        async with self._request("GET", path) as response:
            return await response.read()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._request(method, path, **kwargs) as response:
            body = await response.read()
        try:
            return msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise ClientError(f"{self.url} did not answer JSON: is it a batchd server?") from exc

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a success status; transport failures and API errors raised."""
        try:
            async with self._session.request(method, self.url + path, **kwargs) as response:
                if response.status >= 400:
                    raise _api_error(response.status, await response.read())
                yield response
        except aiohttp.ClientConnectionError as exc:
            raise ServerUnreachable(
                f"cannot reach a batchd server at {self.url} ({exc}); "
                "is `batchd serve` running there? (set --url or BATCHD_URL)"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ClientError(f"request to {self.url} failed: {exc}") from exc

    # -- the Batches API -----------------------------------------------------------------

    async def create(
        self,
        encoded_requests: Sequence[bytes],
        idempotency_key: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Batch:
        """Create a batch; ``extra_headers``: batchd's own (batchd-priority, ...). With
        ``idempotency_key``, a create whose connection dropped after it was sent is sent again
        with the same key (for up to CREATE_RETRY_SECONDS, while the server restarts): the
        server answers the batch the first one made, if it did."""
        body = b'{"requests":[' + b",".join(encoded_requests) + b"]}"
        headers = {"content-type": "application/json", **(extra_headers or {})}
        if idempotency_key is None:
            batch: Batch = await self._call("POST", BATCHES, data=body, headers=headers)
            return batch
        headers["idempotency-key"] = idempotency_key
        batch = await self._idempotent("POST", BATCHES, data=body, headers=headers)
        return batch

    async def _idempotent(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call with an Idempotency-Key header, sent again while its connection drops."""
        deadline: float | None = None  # set once a sent create lost its connection
        delay = 0.25
        while True:
            try:
                return await self._call(method, path, **kwargs)
            except ServerUnreachable as exc:
                refused = isinstance(exc.__cause__, aiohttp.ClientConnectorError)
                if deadline is None and refused:
                    raise  # never reached the server: nothing to make sure of
                deadline = deadline or time.monotonic() + CREATE_RETRY_SECONDS
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def schedule(self, batch_id: str) -> Batch:
        """batchd's own: a batch's priority, deadline and whether it will miss it."""
        schedule: Batch = await self._call("GET", f"{BATCHES}/{batch_id}/schedule")
        return schedule

    async def retrieve(self, batch_id: str) -> Batch:
        batch: Batch = await self._call("GET", f"{BATCHES}/{batch_id}")
        return batch

    async def list_batches(
        self, limit: int, after_id: str | None = None
    ) -> tuple[list[Batch], bool]:
        params: dict[str, str | int] = {"limit": limit}
        if after_id:
            params["after_id"] = after_id
        page = await self._call("GET", BATCHES, params=params)
        return list(page["data"]), bool(page["has_more"])

    async def estimate(self, encoded_requests: Sequence[bytes]) -> dict[str, Any]:
        """What these requests would take as a batch (batchd's own route); creates nothing."""
        body = b'{"requests":[' + b",".join(encoded_requests) + b"]}"
        headers = {"content-type": "application/json"}
        path = "/v1/messages/batch_estimate"
        estimate: dict[str, Any] = await self._call("POST", path, data=body, headers=headers)
        return estimate

    async def usage(self, batch_id: str) -> dict[str, Any]:
        """A batch's usage and cost (batchd's own route)."""
        usage: dict[str, Any] = await self._call("GET", f"{BATCHES}/{batch_id}/usage")
        return usage

    async def cancel(self, batch_id: str) -> Batch:
        headers = {"content-type": "application/json"}  # as the SDK sends it, body or none
        batch: Batch = await self._call("POST", f"{BATCHES}/{batch_id}/cancel", headers=headers)
        return batch

    async def delete(self, batch_id: str) -> Batch:
        deleted: Batch = await self._call("DELETE", f"{BATCHES}/{batch_id}")
        return deleted

    async def results(self, batch_id: str) -> AsyncIterator[bytes]:
        """The batch's JSONL result lines, each without its newline, as they stream in."""
        async with self._request("GET", f"{BATCHES}/{batch_id}/results") as response:
            async for line in _lines(response):
                yield line

    @asynccontextmanager
    async def recorded(
        self, batch_id: str, after: str | None
    ) -> AsyncIterator[tuple[str, AsyncIterator[bytes]]]:
        """The result lines recorded after cursor ``after`` (all, if None), in any status,
        and the cursor to read on from."""
        params = {"partial": "true"} | ({"after": after} if after is not None else {})
        path = f"{BATCHES}/{batch_id}/results"
        async with self._request("GET", path, params=params) as response:
            yield response.headers[RESULTS_CURSOR], _lines(response)

    async def retry(self, batch_id: str, result_types: Sequence[str] = ()) -> Batch:
        """A new batch of the ended batch's requests of ``result_types`` (the server's
        default: errored and expired)."""
        body = msgspec.json.encode({"result_types": list(result_types)}) if result_types else b""
        headers = {"content-type": "application/json"}
        path = f"{BATCHES}/{batch_id}/retry"
        batch: Batch = await self._call("POST", path, data=body, headers=headers)
        return batch

    async def details(self, batch_id: str) -> dict[str, Any]:
        """batchd's own facts of a batch: retry_of, retried_by, reused_answers."""
        details: dict[str, Any] = await self._call("GET", f"{BATCHES}/{batch_id}/details")
        return details


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for line in response.content:
        line = line.rstrip(b"\r\n")
        if line:
            yield line
