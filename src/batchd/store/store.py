"""The Store: every rule of batches, requests and keys in the database, written once over a
dialect's driver (store/sqlite.py, store/postgres.py) and its named SQL (store/*.sql).

Request counts: a batch's counters always equal its rows by state. Every statement that moves
requests to a final state reports what it moved (its row count, or a row per request), and
the counters move by exactly that in its transaction: a concurrent statement that finds the
rows already moved reports nothing, so no request is counted twice. Usage is summed the same way:
the tokens of the results a record writes (never of the fenced ones) go to the batch's and
the workspace's day's totals in its transaction. Webhook events are written to the outbox
(store/outbox.py) in the transaction of the change that causes them. Claims start after a
per-(backend, batch) watermark kept in this process, so that PostgreSQL does not walk the
dead index entries of every row claimed before (O(n^2) over a batch); rows below it
(requeued, or skipped while another claim held them) are found by a second look from the start.
Within a batch, claims go in (prefix key, id) order: requests whose prompts start alike
come together (batchd/prefix.py), the batch file's order where keys are equal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

from batchd.domain import (
    FINAL_STATES,
    NO_USAGE,
    ApiKey,
    Batch,
    BatchDialect,
    CancelOutcome,
    ClaimedRequest,
    DailyUsage,
    DeleteOutcome,
    FileRole,
    ModelUsage,
    Outcome,
    RawParams,
    RequestState,
    SlotShare,
    StoredFile,
    TokenUsage,
    WebhookEvent,
    fleet_share,
    utc_day,
)
from batchd.errors import BatchdError, InvalidRequest, StoreUnavailable
from batchd.store.outbox import emit_batch_event
from batchd.store.queries import Dialect, load_migrations


class SchemaMismatch(BatchdError):
    """The database schema is not the version this code expects."""


class NewRequest(NamedTuple):
    """A request to insert; ``result`` is set when it is already final (bad params). A tuple:
    a batch makes one per request, by the hundred thousand."""

    custom_id: str
    backend: str | None
    params: RawParams  # bytes, or a view into the create body
    state: RequestState
    result: bytes | None = None
    prefix_key: str = ""  # its place in the claim order (batchd/prefix.py)
    endpoint: str | None = None  # an OpenAI request's endpoint; None: a Messages request


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file row to insert: an upload (its chunks given with it), or a batch's output or
    error file (created with the batch, its lines rendered from the batch's requests)."""

    id: str
    workspace: str
    purpose: str
    filename: str
    created_at: float
    expires_at: float | None
    role: FileRole
    bytes: int | None = None
    lines: int = 0
    # an output or error file's lifetime from its batch's end; its expires_at until then is
    # the most it may live (the batch's results' retention)
    expires_after: float | None = None


@dataclass(frozen=True, slots=True)
class ResultRow:
    custom_id: str
    state: RequestState
    result: bytes | None


# One row of a results page, as the driver returns it (no object per row on this hot path):
# (id, custom_id, state, result line or None for canceled/expired requests).
ResultRecord = tuple[int, str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A create's Idempotency-Key: the first create with it within the window is the one."""

    key: str
    body_hash: bytes
    not_before: float  # keys used before this are forgotten (24 h ago)


class IdempotencyMismatch(InvalidRequest):
    """The key was used within its window for a create with a different body."""


@dataclass(frozen=True, slots=True)
class Claim:
    requests: list[ClaimedRequest]
    exhausted: list[int]  # batches that had fewer queued requests than asked for


@dataclass(frozen=True, slots=True)
class Claimable:
    """A batch whose queued requests may be claimed: what the engine orders claims by."""

    seq: int
    workspace: str
    priority: int
    deadline: float  # expires_at


@dataclass(frozen=True, slots=True)
class Recorded:
    applied: int  # results written; the others were fenced off (their lease was lost)
    ended: int  # batches these results completed
    ended_dialects: tuple[BatchDialect, ...] = field(default=(), compare=False)  # for /metrics


@dataclass(frozen=True, slots=True)
class Sweep:
    requeued: int  # running requests whose lease had expired, back in the queue
    expired: int  # batches past their deadline whose queued requests became expired
    ended: int  # batches that had nothing left to do and are now ended
    ended_dialects: tuple[BatchDialect, ...] = field(default=(), compare=False)  # for /metrics


class Row(Protocol):  # read by position or column name: sqlite3.Row, asyncpg.Record
    def __getitem__(self, key: Any, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class Purge:
    requests: int  # requests deleted (params and results)
    batches: int  # batches whose last request went: their rows stay, with their counts
    reclaimed_bytes: int  # given back to the file system (SQLite's incremental vacuum)
    files: int = 0  # files of the OpenAI face deleted past their expires_at


@dataclass(frozen=True, slots=True)
class DatabaseStats:
    """What the database holds, for ``batchd db stats``."""

    batches: dict[str, int]  # by processing status
    purged_batches: int  # ended batches past retention whose requests are deleted
    requests: dict[str, int]  # by state
    used_bytes: int  # pages in use (SQLite) or the database's size (PostgreSQL)
    free_bytes: int | None  # SQLite's free pages, not yet given back
    files: dict[str, int]  # SQLite: the database file and its WAL, bytes on disk


@dataclass(frozen=True, slots=True)
class RequestFigures:
    """Server-wide figures for /metrics: stored requests by state, queued ones per backend."""

    by_state: dict[RequestState, int]
    queued_by_backend: dict[str, int]
    at_risk: int = 0  # unfinished batches that will miss their deadline at the rate so far
    # (workspace, backend, tokens) summed as results were recorded, over all time
    tokens_by_workspace: list[tuple[str, str, TokenUsage]] = field(default_factory=list)
    # per backend, the slots of its fleet_max_concurrency that live leases hold
    fleet_slots: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a PostgreSQL store waits for the server (SQLite waits for its busy timeout)."""

    connect: float = 5.0  # to connect, seconds
    statement: float = 10.0  # for one statement's answer, seconds


DEFAULT_TIMEOUTS = Timeouts()
Params = Mapping[str, Any]
NO_PARAMS: Params = {}
Rows = list[Row]  # plain tuples where ``plain`` is asked for, on the hot paths


class Tx(Protocol):  # one transaction of a driver, running the named queries of store/*.sql
    async def fetch(self, query: str, params: Params = NO_PARAMS) -> list[Row]: ...
    async def execute(self, query: str, params: Params = NO_PARAMS) -> int: ...  # rows changed
    # The query once per row of ``rows`` (with ``shared`` too): every row the runs returned.
    async def fetch_each(self, query: str, rows: Sequence[Params], shared: Params) -> list[Row]: ...
    async def bulk_insert(self, table: str, columns: Sequence[str], rows: list[Any]) -> None: ...
    async def notify(self) -> None: ...  # wake the waiting workers once this commits
    async def run_script(self, sql: str) -> None: ...
    # A named query with no statement timeout: waiting for a lock a long migration holds.
    async def fetch_unbounded(self, query: str) -> list[Row]: ...


class Driver(Protocol):  # what a dialect gives the Store; its errors leave as StoreUnavailable
    dialect: Dialect

    async def fetch(self, query: str, params: Params = NO_PARAMS, plain: bool = False) -> Rows: ...
    # Not durable: bookkeeping whose loss in a power cut only means a request runs again.
    def transaction(
        self, *, durable: bool = True, bulk: bool = False
    ) -> AbstractAsyncContextManager[Tx]: ...
    # Until work may have been queued here (or, where the dialect can tell, in another process).
    async def wait_for_work(self, seconds: float) -> bool: ...
    # Give up to ``pages`` free pages back to the file system (SQLite); the bytes given back.
    async def reclaim_space(self, pages: int) -> int: ...
    def files(self) -> dict[str, int]: ...  # the files of the database and their sizes
    # A consistent copy of the live database at ``path`` (SQLite's backup API).
    async def backup(self, path: str) -> None: ...
    # Make freed space returnable where a file was made without (SQLite); True if it did.
    async def enable_reclaim(self) -> bool: ...
    async def close(self) -> None: ...


async def wait_for(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` and clear it; False after ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    event.clear()
    return True


RECLAIM_PAGES = 10_000  # free pages given back after each purged chunk, at most
REQUEST_COLUMNS = (
    "batch_seq", "custom_id", "backend", "params", "state", "result", "done_seq", "prefix_key",
    "endpoint",
)  # fmt: skip
_START = ("", 0)  # a claim watermark before every row


def _claim_order(row: Row) -> tuple[str, int]:
    """A claimed row's place in the claim order: (prefix_key, id)."""
    return cast(str, row[4]), cast(int, row[0])


FILE_PAGE = 1  # chunks read at once: one, so that reading a file holds two (one read ahead)


class Store:
    def __init__(self, driver: Driver) -> None:
        from batchd.store.webhooks import WebhookStore

        self.driver = driver
        self.close, self.wait_for_work = driver.close, driver.wait_for_work
        self.backup, self.enable_reclaim = driver.backup, driver.enable_reclaim
        # claim watermarks: (backend, seq) -> (prefix_key, id) of the last row claimed
        self._marks: dict[tuple[str, int], tuple[str, int]] = {}
        self.webhooks = WebhookStore(driver)

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool | None = None, timeouts: Timeouts = DEFAULT_TIMEOUTS
    ) -> Store:
        """The store a database URL names (``sqlite:///PATH``, ``postgresql://...``), its schema
        checked. ``migrate=None`` is each dialect's default: SQLite applies pending migrations
        (zero set-up), PostgreSQL never does (run ``batchd migrate``)."""
        driver: Driver
        if url.startswith(("postgresql://", "postgres://")):
            from batchd.store.postgres import PostgresDriver

            driver = await PostgresDriver.open(url, timeouts)
        else:
            from batchd.store.sqlite import SQLiteDriver

            driver = await SQLiteDriver.open(url)
        try:
            await _migrate(driver, apply=driver.dialect == "sqlite" if migrate is None else migrate)
        except BaseException:
            await driver.close()
            raise
        return cls(driver)

    async def create_batch(
        self,
        batch_id: str,
        workspace: str,
        created_at: float,
        expires_at: float,
        requests: Sequence[NewRequest],
        check_backlog: Callable[[int, int, int], None] | None = None,
        *,
        priority: int = 0,
        input_tokens: int = 0,
        retry_of: str | None = None,
        idempotency: IdempotencyKey | None = None,
        dialect: BatchDialect = BatchDialect.ANTHROPIC,
        dialect_fields: bytes | None = None,
        files: Sequence[NewFile] = (),
    ) -> Batch:
        """Store a batch, its requests and (the OpenAI face) its output and error files;
        ``check_backlog(unfinished batches, requests not final, their input tokens)`` sees
        the workspace's backlog first and may refuse. With ``idempotency``, the batch its
        key made within the window instead, if any
        (IdempotencyMismatch when that create's body was another)."""
        batch = {"id": batch_id, "workspace": workspace, "total": len(requests)}
        batch |= {"priority": priority, "input_tokens": input_tokens}
        times = {"created_at": created_at, "expires_at": expires_at}
        face = {"dialect": dialect.value, "dialect_fields": dialect_fields}
        async with self.driver.transaction(bulk=True) as tx:
            if idempotency is not None:
                made = await _claim_idempotency_key(tx, workspace, batch, created_at, idempotency)
                if made is not None:
                    return made
            if check_backlog is not None:  # sees the workspace's backlog, may raise to refuse
                await tx.fetch("lock_workspace", {"workspace": workspace})
                [backlog] = await tx.fetch("workspace_backlog", {"workspace": workspace})
                check_backlog(*backlog)
            [[seq]] = await tx.fetch("insert_batch", batch | times | face | {"retry_of": retry_of})
            for file in files:
                await tx.fetch("insert_file", _file_params(file, seq))
            rows = [
                (
                    seq,
                    r.custom_id,
                    r.backend,
                    r.params,
                    r.state,
                    r.result,
                    _created_mark(r),
                    r.prefix_key,
                    r.endpoint,
                )
                for r in requests
            ]
            await tx.bulk_insert("requests", REQUEST_COLUMNS, rows)
            # the final ones: refused before they ran
            await _add_counts(tx, seq, Counter(r.state for r in requests), created_at)
            ended = await tx.fetch("finalize_batch", {"seq": seq, "now": created_at})
            await tx.notify()
            created = await (_ended(tx, seq, created_at) if ended else _batch_by_seq(tx, seq))
            queued = await self._emit_if(tx, bool(ended), WebhookEvent.BATCH_ENDED, created)
        self.webhooks.wake(queued)
        return created

    async def get_batch(self, workspace: str, batch_id: str) -> Batch | None:
        rows = await self.driver.fetch("get_batch", {"id": batch_id, "workspace": workspace})
        return Batch.from_row(rows[0]) if rows else None

    async def list_batches(
        self,
        workspace: str,
        limit: int,
        after_id: str | None,
        before_id: str | None,
        dialect: BatchDialect = BatchDialect.ANTHROPIC,
    ) -> tuple[list[Batch], bool] | None:
        """A face's batches, newest first; None when a cursor id is unknown there."""
        params: dict[str, object] = {
            "workspace": workspace,
            "limit": limit + 1,
            "dialect": dialect.value,
        }
        cursor_id = before_id or after_id
        if cursor_id is not None:
            anchor = await self.get_batch(workspace, cursor_id)
            if anchor is None or anchor.dialect is not dialect:
                return None
            params["seq"] = anchor.seq
        query = "list_newer" if before_id else "list_older" if after_id else "list_newest"
        batches = [Batch.from_row(r) for r in await self.driver.fetch(query, params)]
        return (batches[:limit][::-1] if before_id else batches[:limit]), len(batches) > limit

    async def cancel_batch(
        self,
        workspace: str,
        batch_id: str,
        now: float,
        dialect: BatchDialect = BatchDialect.ANTHROPIC,
    ) -> tuple[Batch, CancelOutcome] | None:
        async with self.driver.transaction() as tx:
            rows = await tx.fetch("lock_batch", {"id": batch_id, "workspace": workspace})
            if not rows or rows[0]["dialect"] != dialect:
                return None
            batch = Batch.from_row(rows[0])
            if not await tx.execute("start_cancel", {"seq": batch.seq, "now": now}):
                outcome = CancelOutcome.ALREADY_CANCELING
                if batch.processing_status == "ended":
                    outcome = CancelOutcome.ALREADY_ENDED
                return batch, outcome
            await _settle_queued(tx, batch.seq, RequestState.CANCELED, now)
            canceling = await _batch_by_seq(tx, batch.seq)
            queued = await emit_batch_event(tx, WebhookEvent.BATCH_CANCELED, canceling, now)
        self.webhooks.wake(queued)
        return canceling, CancelOutcome.CANCELED

    async def delete_batch(self, workspace: str, batch_id: str) -> DeleteOutcome:
        async with self.driver.transaction() as tx:
            rows = await tx.fetch("lock_batch", {"id": batch_id, "workspace": workspace})
            if not rows or rows[0]["dialect"] != BatchDialect.ANTHROPIC:
                return DeleteOutcome.NOT_FOUND
            if rows[0]["processing_status"] != "ended":
                return DeleteOutcome.NOT_ENDED
            await tx.execute("delete_requests", {"seq": rows[0]["seq"]})
            await tx.execute("delete_batch_usage", {"seq": rows[0]["seq"]})
            await tx.execute("delete_batch", {"seq": rows[0]["seq"]})
        with contextlib.suppress(StoreUnavailable):  # deleted; the next purge gives it back
            await self.driver.reclaim_space(RECLAIM_PAGES)  # the space of its requests
        return DeleteOutcome.DELETED

    async def _pages(self, query: str, params: Params, page_size: int) -> AsyncIterator[Rows]:
        """A query's rows in id order (its first column), ``page_size`` at a time, by keyset."""
        after = 0
        while True:
            rows = await self.driver.fetch(
                query, {**params, "after": after, "limit": page_size}, True
            )
            if not rows:
                return
            after = rows[-1][0]
            yield rows
            if len(rows) < page_size:
                return

    async def iter_results(
        self, batch_seq: int, page_size: int
    ) -> AsyncIterator[list[ResultRecord]]:
        """A batch's rows in request order, a page at a time."""
        async for rows in self._pages("results_page", {"seq": batch_seq}, page_size):
            yield cast(list[ResultRecord], rows)

    async def results_mark(self, batch_seq: int) -> int:
        """The mark of the results recorded so far: every one with done_seq <= it is visible."""
        [[mark]] = await self.driver.fetch("results_mark", {"seq": batch_seq})
        return int(mark)

    async def iter_recorded(
        self, batch_seq: int, after: int, upto: int, page_size: int
    ) -> AsyncIterator[list[ResultRecord]]:
        """The results made final after mark ``after`` up to mark ``upto``, in request order."""
        params = {"seq": batch_seq, "mark": after, "upto": upto}
        async for rows in self._pages("recorded_page", params, page_size):
            yield cast(list[ResultRecord], rows)

    async def results_page(
        self, batch_seq: int, *, after: int, limit: int, state: str = "", prefix: str = ""
    ) -> list[ResultRecord]:
        """Final results in request order after request ``after``: of one state ('' for any),
        whose custom_id starts with ``prefix``."""
        params = {"seq": batch_seq, "after": after, "limit": limit}
        rows = await self.driver.fetch(
            "filtered_page", params | {"state": state, "prefix": prefix}, True
        )
        return cast(list[ResultRecord], rows)

    async def request_result(self, batch_seq: int, custom_id: str) -> ResultRecord | None:
        """One request's final result; None when it has none yet (or no such request)."""
        rows = await self.driver.fetch(
            "request_result", {"seq": batch_seq, "custom_id": custom_id}, True
        )
        return cast(ResultRecord, rows[0]) if rows else None

    async def iter_requests_in(
        self, batch_seq: int, states: Sequence[RequestState], page_size: int
    ) -> AsyncIterator[list[tuple[int, str, bytes]]]:
        """The (id, custom_id, params) of a batch's requests in ``states`` (one to three)."""
        named = {f"state{i + 1}": states[min(i, len(states) - 1)].value for i in range(3)}
        async for rows in self._pages("requests_in_states", {"seq": batch_seq} | named, page_size):
            yield [(r[0], r[1], bytes(r[2])) for r in rows]

    async def retries_of(self, workspace: str, batch_id: str) -> list[str]:
        """The ids of the batches that retry this one, oldest first."""
        rows = await self.driver.fetch("retries_of", {"workspace": workspace, "id": batch_id})
        return [r[0] for r in rows]

    async def find_answers(self, keys: Sequence[str]) -> dict[str, bytes]:
        """A result line of a request that succeeded with each of these answer keys that one
        did (the others are missing)."""
        if not keys:
            return {}
        rows = await self.driver.fetch("find_answers", {"keys": sorted(set(keys))})
        return {r[0]: bytes(r[1]) for r in rows}

    async def errored_results(self, batch_seq: int, limit: int) -> list[ResultRow]:
        """The first ``limit`` errored requests of a batch, in request order."""
        rows = await self.driver.fetch("errored_page", {"seq": batch_seq, "limit": limit})
        return [ResultRow(r["custom_id"], RequestState(r["state"]), r["result"]) for r in rows]

    async def request_figures(self) -> RequestFigures:
        queued = {r["backend"]: r["n"] for r in await self.driver.fetch("queued_by_backend")}
        [running] = await self.driver.fetch("running_count")
        [totals] = await self.driver.fetch("final_totals")
        by_state = {RequestState.QUEUED: sum(queued.values()), RequestState.RUNNING: running[0]}
        by_state |= {s: int(totals[s.value]) for s in FINAL_STATES}
        return RequestFigures(
            by_state, queued, tokens_by_workspace=await self.tokens_by_workspace()
        )

    async def claimable_batches(self, now: float) -> list[Claimable]:
        """The batches whose queued requests may be claimed now, oldest first."""
        rows = await self.driver.fetch("claimable_batches", {"now": now}, True)
        return [Claimable(*row) for row in rows]

    async def unfinished_batches(self) -> list[Batch]:
        """Every workspace's batches not yet ended (for the figures of /metrics)."""
        return [Batch.from_row(r) for r in await self.driver.fetch("unfinished_batches")]

    async def claim(
        self,
        backend: str,
        batch_seqs: Sequence[int],
        owner: str,
        limit: int,
        lease_until: float,
        *,
        share: int | Mapping[int, int] | None = None,
    ) -> Claim:
        """In one transaction, lease up to ``limit`` queued requests for ``backend``,
        at most ``share`` from each batch (or ``share[seq]`` from batch ``seq``), taking the
        batches in the order given."""
        claimed: list[ClaimedRequest] = []
        exhausted: list[int] = []
        async with self.driver.transaction(durable=False) as tx:
            for seq in batch_seqs:
                mine = share.get(seq, 0) if isinstance(share, Mapping) else share or limit
                want = min(mine, limit - len(claimed))
                if want <= 0:
                    if len(claimed) >= limit:
                        break
                    continue
                # From the watermark on; when that finds too few, look again from the start.
                params = {"backend": backend, "seq": seq, "owner": owner, "until": lease_until}
                mark = self._marks.get((backend, seq), _START)
                after = {"mark_key": mark[0], "mark": mark[1]}
                rows = await tx.fetch("claim", params | after | {"limit": want})
                if len(rows) < want and mark > _START:
                    start = {"mark_key": _START[0], "mark": _START[1], "limit": want - len(rows)}
                    rows += await tx.fetch("claim", params | start)
                if len(rows) < want:
                    exhausted.append(seq)
                rows.sort(key=_claim_order)
                if rows:
                    self._marks[(backend, seq)] = max(mark, _claim_order(rows[-1]))
                claimed += [ClaimedRequest(r[0], seq, r[1], r[2], r[3], r[5]) for r in rows]
        if len(self._marks) > 10_000:  # forget the marks of batches no longer asked for
            asked = {(backend, s) for s in batch_seqs}
            self._marks = {k: v for k, v in self._marks.items() if k in asked}
        return Claim(claimed, exhausted)

    async def renew_leases(self, owner: str, lease_until: float, ids: Sequence[int]) -> int:
        """Extend the leases of these requests, where ``owner`` still holds them."""
        params = {"owner": owner, "until": lease_until, "ids": list(ids)}
        async with self.driver.transaction(durable=False) as tx:
            return await tx.execute("renew_leases", params)

    async def record(self, owner: str, outcomes: Sequence[Outcome], now: float) -> Recorded:
        """Write final results fenced by (owner, attempt), and end the batches they complete."""
        if not outcomes:
            return Recorded(0, 0)
        ordered = sorted(outcomes, key=lambda o: o.request.id)  # lock rows in one order
        rows = [
            dict(
                id=o.request.id,
                attempt=o.request.attempt,
                state=o.state,
                result=o.line,
                answer_key=o.answer_key,
            )
            for o in ordered
        ]
        by_id = {o.request.id: o for o in ordered}
        reused = {o.request.id for o in ordered if o.reused}
        tallies: dict[int, _Tally] = {}
        ids: dict[int, list[int]] = {}
        ended: list[BatchDialect] = []
        queued = 0
        # SQLite has one writer: its marks are taken first and written with the results, in
        # one statement. PostgreSQL takes them after, as every writer locks requests before
        # their batches (the other order would deadlock with the sweeper's requeue).
        marks_first = self.driver.dialect == "sqlite"
        async with self.driver.transaction() as tx:
            marks: dict[int, int] = {}
            for seq in sorted({o.request.batch_seq for o in ordered}) if marks_first else ():
                [[marks[seq]]] = await tx.fetch("next_mark", {"seq": seq})
            for row, outcome in zip(rows, ordered, strict=True):
                row["mark"] = marks.get(outcome.request.batch_seq)
            written = await tx.fetch_each("record_result", rows, {"owner": owner})
            for request_id, seq, state, backend in written:
                tallies.setdefault(seq, _Tally()).add(by_id[request_id], state, backend or "")
                ids.setdefault(seq, []).append(request_id)
            for seq in sorted(tallies):  # in batch order, so that writers lock batches alike
                if not marks_first:
                    [[mark]] = await tx.fetch("next_mark", {"seq": seq})
                    await tx.execute("mark_done", {"mark": mark, "ids": ids[seq]})
                n_reused = sum(i in reused for i in ids[seq])
                workspace = await _add_counts(tx, seq, tallies[seq].states, reused=n_reused)
                await tallies[seq].write(tx, seq, workspace, utc_day(now))
                if await tx.fetch("finalize_batch", {"seq": seq, "now": now}):
                    batch = await _ended(tx, seq, now)
                    ended.append(batch.dialect)
                    queued += await emit_batch_event(tx, WebhookEvent.BATCH_ENDED, batch, now)
        self.webhooks.wake(queued)
        return Recorded(len(written), len(ended), tuple(ended))

    async def sweep(self, now: float) -> Sweep:
        """In one transaction: requeue lost leases, expire overdue batches, end finished ones."""
        async with self.driver.transaction(durable=False) as tx:
            [lock] = await tx.fetch("sweep_lock")
            if not lock[0]:
                return Sweep(requeued=0, expired=0, ended=0)  # another worker is sweeping
            requeued = await _requeue(tx, "requeue_lost", {"now": now}, now)
            expiring = [r[0] for r in await tx.fetch("expiring_batches", {"now": now})]
            queued = 0
            for seq in expiring:
                await _settle_queued(tx, seq, RequestState.EXPIRED, now)
                moved = await tx.execute("expire_running", {"seq": seq})
                await _add_counts(tx, seq, Counter({RequestState.EXPIRED.value: moved}), now)
                batch = await _batch_by_seq(tx, seq)
                queued += await emit_batch_event(tx, WebhookEvent.BATCH_EXPIRED, batch, now)
            ended: list[BatchDialect] = []
            for [seq] in await tx.fetch("finalize_all", {"now": now}):
                batch = await _ended(tx, seq, now)
                ended.append(batch.dialect)
                queued += await emit_batch_event(tx, WebhookEvent.BATCH_ENDED, batch, now)
        self.webhooks.wake(queued)
        return Sweep(requeued, len(expiring), len(ended), tuple(ended))

    async def purge(self, cutoff: float, now: float, chunk: int, *, batches: int = 100) -> Purge:
        """Delete the requests of up to ``batches`` ended batches created at or before
        ``cutoff`` (their results are past retention), ``chunk`` rows per transaction so
        that no lock is held long; each chunk's free pages are given back at once.

        Files past their ``expires_at`` are deleted first (an upload with its bytes). An
        OpenAI batch whose output and error files are then all gone is purged too: its
        results have no reader left. A purged batch's files go with its requests."""
        files, emptied, reclaimed = await self._delete_expired_files(now, batches)
        rows = await self.driver.fetch("purgeable_batches", {"cutoff": cutoff, "limit": batches})
        deleted = purged = 0
        for seq in dict.fromkeys([*emptied, *(r[0] for r in rows)]):
            while True:
                async with self.driver.transaction(durable=False) as tx:
                    n = await tx.execute("delete_request_chunk", {"seq": seq, "limit": chunk})
                    if n < chunk and await tx.execute("mark_purged", {"seq": seq, "now": now}):
                        purged += 1
                        await tx.execute("delete_batch_files", {"seq": seq})
                deleted += n
                reclaimed += await self.driver.reclaim_space(RECLAIM_PAGES)
                if n < chunk:
                    break
        return Purge(deleted, purged, reclaimed, files)

    async def _delete_expired_files(self, now: float, limit: int) -> tuple[int, list[int], int]:
        """Delete the files past their expires_at, one a transaction, giving their space back:
        (files deleted, the ended batches left without files, bytes given back)."""
        deleted = reclaimed = 0
        emptied: list[int] = []
        while True:
            rows = await self.driver.fetch("expired_files", {"now": now, "limit": limit})
            for seq, batch_seq in rows:
                async with self.driver.transaction(durable=False) as tx:
                    await tx.execute("delete_file_chunks", {"seq": seq})
                    deleted += await tx.execute("delete_file", {"seq": seq})
                    if batch_seq is not None:
                        emptied += [
                            r[0] for r in await tx.fetch("batch_without_files", {"seq": batch_seq})
                        ]
                while freed := await self.driver.reclaim_space(RECLAIM_PAGES):
                    reclaimed += freed
            if len(rows) < limit:
                return deleted, emptied, reclaimed

    async def stats(self) -> DatabaseStats:
        batches = await self.driver.fetch("batches_by_status")
        requests = await self.driver.fetch("requests_by_state")
        [[used, free]] = await self.driver.fetch("database_bytes")
        return DatabaseStats(
            batches={r[0]: int(r[1]) for r in batches},
            purged_batches=sum(int(r[2]) for r in batches),
            requests={r[0]: int(r[1]) for r in requests},
            used_bytes=int(used),
            free_bytes=None if free is None else int(free),
            files=self.driver.files(),
        )

    async def release_leases(self, owner: str, now: float | None = None) -> int:
        """Return this owner's running requests to the queue (a graceful stop)."""
        async with self.driver.transaction(durable=False) as tx:
            return await _requeue(
                tx, "release_leases", {"owner": owner}, time.time() if now is None else now
            )

    async def _emit_if(self, tx: Tx, happened: bool, event: WebhookEvent, batch: Batch) -> int:
        now = batch.ended_at or batch.created_at
        return await emit_batch_event(tx, event, batch, now) if happened else 0

    # -- usage ----------------------------------------------------------------------------

    async def batch_usage(self, batch_seq: int) -> list[ModelUsage]:
        """A batch's usage per model, as its results were recorded."""
        rows = await self.driver.fetch("batch_usage", {"seq": batch_seq})
        return [ModelUsage(r["model"], r["requests"], _tokens(r)) for r in rows]

    async def daily_usage(self, workspace: str | None, since: str) -> list[DailyUsage]:
        """Usage per UTC day, workspace and model from ``since`` (``YYYY-MM-DD``) on;
        every workspace's where ``workspace`` is None."""
        params = {"workspace": workspace or "", "since": since}
        return [
            DailyUsage(
                r["day"], r["workspace"], r["model"], {s: int(r[s]) for s in _FINAL}, _tokens(r)
            )
            for r in await self.driver.fetch("daily_usage", params)
        ]

    async def tokens_by_workspace(self) -> list[tuple[str, str, TokenUsage]]:
        """(workspace, backend, tokens) over all time, for /metrics."""
        rows = await self.driver.fetch("tokens_by_workspace")
        return [(r["workspace"], r["backend"], _tokens(r)) for r in rows]

    async def draw_budget(
        self, name: str, rate: float, capacity: float, want: float, now: float
    ) -> float:
        """Take up to ``want`` from the shared token bucket ``name`` (``rate`` a second, at
        most ``capacity``, full when first used); what was granted, 0 when it is empty."""
        async with self.driver.transaction(durable=False) as tx:
            await tx.execute("ensure_budget", {"name": name, "level": capacity, "now": now})
            [[level, stamp]] = await tx.fetch("lock_budget", {"name": name})
            # A draw that read the clock before another one's, and waited for the row
            # meanwhile, refills nothing: the refill since ``stamp`` is counted once.
            level = min(capacity, level + max(0.0, now - stamp) * rate)
            granted = max(0.0, min(want, level))
            since = max(stamp, now)
            await tx.execute("set_budget", {"name": name, "level": level - granted, "now": since})
            return float(granted)

    async def share_slots(
        self,
        backend: str,
        holder: str,
        total: int,
        *,
        keep: int,
        wanted: int,
        now: float,
        until: float,
    ) -> SlotShare:
        """One look at ``holder``'s share of ``backend``'s ``total`` fleet slots
        (``domain.fleet_share``): lapsed leases are freed first, and what it now holds is
        leased to it until ``until``; a holder that neither holds nor wants any leaves no row."""
        params = {"backend": backend, "holder": holder}
        async with self.driver.transaction(durable=False) as tx:
            await tx.fetch("lock_fleet_slots", {"backend": backend})
            await tx.execute("free_lapsed_slots", {"backend": backend, "now": now})
            rows = await tx.fetch("fleet_holders", {"backend": backend})
            others = {r[0]: (int(r[1]), int(r[2])) for r in rows if r[0] != holder}
            share = fleet_share(total, wanted, keep, others, holder)
            if share.slots or wanted:
                row = {"slots": share.slots, "wanted": wanted, "until": until}
                await tx.execute("set_slots", params | row)
            else:
                await tx.execute("drop_slots", params)
            return share

    async def drop_slots(self, backend: str, holder: str) -> None:
        """Give back every slot ``holder`` holds of ``backend`` (a graceful stop)."""
        async with self.driver.transaction(durable=False) as tx:
            await tx.execute("drop_slots", {"backend": backend, "holder": holder})

    async def fleet_slots_held(self, now: float) -> dict[str, int]:
        """Per backend, the fleet slots that live leases hold (for /metrics)."""
        return {r[0]: int(r[1]) for r in await self.driver.fetch("fleet_slots_held", {"now": now})}

    # -- files of the OpenAI face -------------------------------------------------------------

    async def create_file(self, file: NewFile, chunks: Iterable[bytes]) -> StoredFile:
        """Store an upload and its bytes, in one transaction, one chunk in memory at a time."""
        async with self.driver.transaction(bulk=True) as tx:
            [[seq]] = await tx.fetch("insert_file", _file_params(file, None))
            for chunk in chunks:
                await tx.bulk_insert("file_chunks", ("file_seq", "data"), [(seq, chunk)])
        stored = await self.get_file(file.workspace, file.id)
        assert stored is not None
        return stored

    async def get_file(self, workspace: str, file_id: str) -> StoredFile | None:
        rows = await self.driver.fetch("get_file", {"id": file_id, "workspace": workspace})
        return StoredFile.from_row(rows[0]) if rows else None

    async def list_files(
        self,
        workspace: str,
        limit: int,
        after_id: str | None,
        *,
        purpose: str | None,
        newest_first: bool,
        now: float,
    ) -> tuple[list[StoredFile], bool] | None:
        """Visible files, by creation (not those past their expires_at at ``now``); None when
        the cursor id is unknown here."""
        seq = 2**62 if newest_first else 0
        if after_id is not None:
            anchor = await self.get_file(workspace, after_id)
            if anchor is None:
                return None
            seq = anchor.seq
        params = {
            "workspace": workspace, "seq": seq, "purpose": purpose, "limit": limit + 1, "now": now
        }  # fmt: skip
        query = "list_files_desc" if newest_first else "list_files_asc"
        found = [StoredFile.from_row(r) for r in await self.driver.fetch(query, params)]
        return found[:limit], len(found) > limit

    async def file_chunks(self, file_seq: int) -> AsyncIterator[bytes]:
        """An upload's bytes, a chunk at a time; the next one is read while this one is used."""

        def read(after: int) -> asyncio.Future[Rows]:
            params = {"seq": file_seq, "after": after, "limit": FILE_PAGE}
            return asyncio.ensure_future(self.driver.fetch("file_chunks_page", params, True))

        ahead = read(0)
        try:
            while rows := await ahead:
                ahead = read(rows[-1][0])
                for row in rows:
                    yield bytes(row[1])
        finally:
            ahead.cancel()

    async def measure_file(self, file_seq: int, size: int, lines: int) -> None:
        async with self.driver.transaction(durable=False) as tx:
            await tx.execute("measure_file", {"seq": file_seq, "bytes": size, "lines": lines})

    async def delete_file(self, workspace: str, file_id: str, now: float) -> bool:
        """Delete a visible file (False: none, or not visible at ``now``)."""
        async with self.driver.transaction() as tx:
            rows = await tx.fetch("get_file", {"id": file_id, "workspace": workspace})
            if not rows or not StoredFile.from_row(rows[0]).visible(now):
                return False
            await tx.execute("delete_file_chunks", {"seq": rows[0]["seq"]})
            await tx.execute("delete_file", {"seq": rows[0]["seq"]})
            return True

    # -- keys -------------------------------------------------------------------------------

    async def create_key(self, key: ApiKey, key_hash: str) -> None:
        params = {"id": key.id, "name": key.name, "workspace": key.workspace, "key_hash": key_hash}
        async with self.driver.transaction() as tx:
            await tx.execute(
                "insert_key",
                params | {"created_at": key.created_at, "is_operator": int(key.operator)},
            )

    async def list_keys(self) -> list[ApiKey]:
        return [ApiKey.from_row(r) for r in await self.driver.fetch("list_keys")]

    async def revoke_key(self, key_id: str, now: float) -> bool:
        async with self.driver.transaction() as tx:
            return await tx.execute("revoke_key", {"id": key_id, "now": now}) == 1

    async def find_key(self, key_hash: str) -> tuple[ApiKey, str] | None:
        rows = await self.driver.fetch("find_key", {"key_hash": key_hash})
        return (ApiKey.from_row(rows[0]), rows[0]["key_hash"]) if rows else None

    async def count_active_keys(self) -> int:
        [row] = await self.driver.fetch("count_active_keys")
        return int(row[0])


def _file_params(file: NewFile, batch_seq: int | None) -> dict[str, Any]:
    return {
        "id": file.id,
        "workspace": file.workspace,
        "purpose": file.purpose,
        "filename": file.filename,
        "bytes": file.bytes,
        "lines": file.lines,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "role": file.role.value,
        "batch_seq": batch_seq,
        "expires_after": file.expires_after,
    }


async def _ended(tx: Tx, seq: int, now: float) -> Batch:
    """A batch that has just ended, its output and error files' lifetimes started."""
    await tx.execute("start_file_lifetimes", {"seq": seq, "now": now})
    return await _batch_by_seq(tx, seq)


async def _batch_by_seq(tx: Tx, seq: int) -> Batch:
    [row] = await tx.fetch("get_batch_by_seq", {"seq": seq})
    return Batch.from_row(row)


_FINAL = tuple(sorted(s.value for s in FINAL_STATES))


def _created_mark(request: NewRequest) -> int | None:
    """A request final from the start is a result from the start (mark 0)."""
    return None if request.state is RequestState.QUEUED else 0


def _tokens(row: Row) -> TokenUsage:
    return TokenUsage(
        int(row["input_tokens"]), int(row["output_tokens"]), int(row["cache_read_tokens"])
    )


async def _add_counts(
    tx: Tx, seq: int, moved: Counter[str], now: float | None = None, *, reused: int = 0
) -> str:
    """Add the requests just moved to a final state to their batch's counters (``reused``
    of them answered from stored answers); given ``now``, to its workspace's usage of that
    day too, as requests of no backend or model (settled or refused before they ran). The
    batch's workspace."""
    finals = {s: moved[s] for s in _FINAL}
    [[workspace]] = await tx.fetch("add_counts", {"seq": seq, "reused": reused} | finals)
    if now is not None and any(finals.values()):
        await _add_daily(tx, utc_day(now), workspace, ("", ""), Counter(finals), NO_USAGE)
    return str(workspace)


async def _add_daily(
    tx: Tx,
    day: str,
    workspace: str,
    backend_model: tuple[str, str],
    states: Counter[str],
    tokens: TokenUsage,
) -> None:
    backend, model = backend_model
    await tx.execute(
        "add_daily_usage",
        {"day": day, "workspace": workspace, "backend": backend, "model": model}
        | {s: states[s] for s in _FINAL}
        | _token_params(tokens),
    )


def _token_params(tokens: TokenUsage) -> dict[str, int]:
    return {
        "input_tokens": tokens.input_tokens,
        "output_tokens": tokens.output_tokens,
        "cache_read_tokens": tokens.cache_read_tokens,
    }


class _Tally:
    """What one record adds to one batch: requests by state, and per model and backend the
    requests and their tokens."""

    def __init__(self) -> None:
        self.states: Counter[str] = Counter()
        self.models: dict[str, tuple[int, TokenUsage]] = {}
        self.daily: dict[tuple[str, str], tuple[Counter[str], TokenUsage]] = {}

    def add(self, outcome: Outcome, state: str, backend: str) -> None:
        self.states[state] += 1
        requests, tokens = self.models.get(outcome.model, (0, NO_USAGE))
        self.models[outcome.model] = (requests + 1, tokens + outcome.usage)
        states, tokens = self.daily.get((backend, outcome.model), (Counter(), NO_USAGE))
        states[state] += 1
        self.daily[(backend, outcome.model)] = (states, tokens + outcome.usage)

    async def write(self, tx: Tx, seq: int, workspace: str, day: str) -> None:
        for model, (requests, tokens) in sorted(self.models.items()):
            params = {"seq": seq, "model": model, "requests": requests}
            await tx.execute("add_batch_usage", params | _token_params(tokens))
        for key, (states, tokens) in sorted(self.daily.items()):
            await _add_daily(tx, day, workspace, key, states, tokens)


async def _settle_queued(tx: Tx, seq: int, state: RequestState, now: float) -> None:
    """A batch's queued requests become ``state`` (canceled or expired), counted as moved."""
    [[mark]] = await tx.fetch("next_mark", {"seq": seq})
    moved = await tx.execute("settle_queued", {"seq": seq, "state": state, "mark": mark})
    await _add_counts(tx, seq, Counter({state.value: moved}), now)


async def _claim_idempotency_key(
    tx: Tx, workspace: str, batch: Mapping[str, object], now: float, claim: IdempotencyKey
) -> Batch | None:
    """The batch this key made within its window (None: none, and the key is now this
    batch's); IdempotencyMismatch when that batch was made from another body."""
    params = {"workspace": workspace, "key": claim.key, "not_before": claim.not_before}
    await tx.fetch("lock_idempotency_key", params)
    found = await tx.fetch("find_idempotency_key", params)
    if found:
        body_hash, made_id = bytes(found[0][0]), found[0][1]
        if body_hash != claim.body_hash:
            raise IdempotencyMismatch(
                f"Idempotency-Key {claim.key!r} was already used with a different request "
                "body; use a new key for a different batch"
            )
        rows = await tx.fetch("get_batch", {"id": made_id, "workspace": workspace})
        if rows:
            return Batch.from_row(rows[0])
    # A batch deleted since: the key makes a new one, as if it had not been used.
    await tx.execute("forget_idempotency_keys", params)
    await tx.execute(
        "insert_idempotency_key",
        params | {"body_hash": claim.body_hash, "batch_id": batch["id"], "created_at": now},
    )
    return None


async def _requeue(tx: Tx, query: str, params: Params, now: float) -> int:
    """Return running requests to the queue; a canceling batch's are canceled."""
    seqs = Counter(r[0] for r in await tx.fetch(query, params))
    if not seqs:
        return 0
    for seq, status in await tx.fetch("lock_batches", {"seqs": sorted(seqs)}):
        if status == "canceling":
            await _settle_queued(tx, seq, RequestState.CANCELED, now)
    await tx.notify()
    return seqs.total()


async def _migrate(driver: Driver, *, apply: bool) -> None:
    """Apply pending migrations in one transaction, one migrating process at a time."""
    migrations = load_migrations(driver.dialect)
    latest = migrations[-1][0]
    async with driver.transaction() as tx:
        if apply:  # another process's migration may hold the lock for as long as it takes
            await tx.fetch_unbounded("migration_lock")
        else:
            await tx.fetch("migration_lock")
        await tx.execute("create_migrations_table")
        [[current]] = await tx.fetch("schema_version")
        if current > latest:
            raise SchemaMismatch(
                f"the database schema is version {current}, newer than this batchd "
                f"(version {latest}); upgrade batchd"
            )
        pending = [(v, sql) for v, sql in migrations if v > current]
        if pending and not apply:
            raise SchemaMismatch(
                f"the database schema is version {current}, older than this batchd expects "
                f"({latest}); run `batchd migrate --db URL` first"
            )
        for version, sql in pending:
            await tx.run_script(sql)
            await tx.execute("add_migration", {"version": version, "now": time.time()})
