"""The worker loop: claim -> run -> record, with a heartbeat and a sweeper beside it.

One dispatcher per backend keeps up to its pacer's limit of requests in flight, claiming
from the unfinished batches in the order ``engine/order.py`` plans: priority first (with a
guaranteed share for lower levels), round-robin over workspaces and then their batches,
earliest deadline first, so that a small batch submitted after a huge one is served at
once. Several engines (``batchd worker`` processes) may share one database: ``SKIP LOCKED``
gives them disjoint rows of the same batch, so N engines serve every batch side by side.
Results go through one writer that commits them in groups, fenced by (owner, attempt): a
worker that lost its lease cannot overwrite a result. The heartbeat renews this worker's
leases; the sweeper returns lost leases to the queue, expires batches past their deadline
and ends finished batches; the purger deletes the requests of batches whose results passed
the retention time.

Where a backend reuses answers (``engine/answers.py``), a claim's requests are decoded as they
are claimed, their stored answers looked up in one query, and identical requests in flight
here at once call the upstream once (``Engine._coalesced``).

While the store is unavailable every loop keeps going: claims, heartbeats and sweeps are
tried again with a doubling delay (``StoreBackoff``), and finished results wait in memory
until they can be written, so that work done during an outage is not done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from prometheus_client import Counter

from batchd.backends.base import OPENAI_EMBEDDINGS
from batchd.backends.pacing import Slot
from batchd.backends.pdf import owned_by
from batchd.backends.runner import BackendRunner
from batchd.domain import BatchDialect, ClaimedRequest, Outcome, RequestState, TokenUsage
from batchd.engine.answers import answer_key, reusable, reused_body, reused_message
from batchd.engine.order import ClaimPlanner
from batchd.engine.webhooks import WebhookSender
from batchd.errors import BatchdError, InvalidRequest, StoreUnavailable, UpstreamError
from batchd.ids import new_worker_id
from batchd.metrics import Metrics
from batchd.schemas.openai import output_line, refused_line
from batchd.schemas.results import errored_line, succeeded_line
from batchd.store import Claimable, Store
from batchd.validation import Params, stored_params

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Decoded:
    """A claimed request's params, decoded once: a Messages request's ``params``, or an
    OpenAI request's ``body`` as it was sent; its model, and whether its answer is the same
    each time (temperature 0, or an embedding)."""

    model: str
    deterministic: bool
    params: Params | None = None
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A claimed request decoded before it runs (where its backend may reuse answers): its
    answer key if it may be answered from a stored answer, and that answer if one is stored."""

    decoded: _Decoded
    key: str | None = None
    stored: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Dialect:
    """How the engine decodes a request of one dialect, reads its answer's usage, takes an
    answer from a stored result line (and the model asked for) and writes its result line."""

    decode: Callable[[ClaimedRequest], _Decoded]
    usage: Callable[[dict[str, Any]], TokenUsage]
    reused: Callable[[bytes, str], dict[str, Any]]
    succeeded: Callable[[str, dict[str, Any]], bytes]
    failed: Callable[[str, BatchdError], bytes]


_body_decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])

WRITE_GROUP = 256  # results committed in one transaction at most
MAX_UNWRITTEN = 4096  # no more claims while this many results wait to be written
STORE_RETRY_MAX = 2.0  # seconds: the longest wait before trying an unavailable store again


class StoreBackoff:
    """How one loop retries an unavailable store: after the n-th failure in a row it waits
    ``first * 2**(n-1)`` seconds, at most STORE_RETRY_MAX. The first failure is logged as a
    warning, the others at debug level, and the recovery once."""

    def __init__(self, what: str, first: float) -> None:
        self.what = what
        self.first = min(first, STORE_RETRY_MAX)
        self.failures = 0

    def failed(self, exc: StoreUnavailable) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "%s failed (the store is unavailable), will retry: %s", self.what, exc)
        return min(self.first * 2.0 ** (self.failures - 1), STORE_RETRY_MAX)

    def succeeded(self) -> None:
        if self.failures:
            log.warning("%s works again after %d failed tries", self.what, self.failures)
            self.failures = 0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    lease_seconds: float
    poll_interval: float
    sweep_interval: float
    claim_chunk: int
    shutdown_grace: float = 5.0
    max_attempts: int = 10  # claims of one request without a result before it ends errored
    retention: float | None = None  # results kept this long after creation; None: for ever
    purge_interval: float = 60.0  # how often the purger looks for batches past retention
    purge_chunk: int = 1000  # requests deleted per transaction


class _Lane:
    """The state of one backend's dispatcher."""

    def __init__(self, runner: BackendRunner) -> None:
        self.runner = runner
        self.pacer = runner.pacer
        self.changed = asyncio.Event()  # a slot freed or new work arrived
        self.pacer.on_free(self.changed.set)
        # metric children, by final state and dialect
        self.finished: dict[tuple[RequestState, BatchDialect], Counter] = {}
        self.has_work = True  # False once a claim round found nothing
        self.exhausted: set[int] = set()  # batches with nothing queued for this backend
        self.planner = ClaimPlanner()
        self.priorities: dict[int, int] = {}  # of the batches claimed from, by seq
        self.tasks: set[asyncio.Task[None]] = set()


class Engine:
    def __init__(
        self,
        store: Store,
        runners: dict[str, BackendRunner],
        settings: EngineSettings,
        clock: Callable[[], float],
        metrics: Metrics,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.owner = new_worker_id()
        self._webhooks = webhooks
        self._store = store
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._lanes = [_Lane(r) for r in runners.values()]
        self._outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self._stop = asyncio.Event()
        self._drained = asyncio.Event()
        # False while our leases may run out early: a renewal failed, or a write waited so
        # long that the deadline it set is near; the sweeper renews them before it sweeps.
        self._leases_renewed = True
        self._renewed_at = -math.inf  # the clock's time at the last renewal of our leases
        self._held: set[int] = set()  # requests claimed and not yet recorded (or fenced off)
        # The answer keys of requests running here, each with its result line once it is
        # known (None: it failed), for identical requests claimed meanwhile (_coalesced).
        self._answering: dict[str, asyncio.Future[bytes | None]] = {}

    def wake(self) -> None:
        """New work may be queued: every dispatcher looks again."""
        for lane in self._lanes:
            lane.exhausted.clear()
            lane.has_work = True
            lane.pacer.batch_backlog = True
            lane.changed.set()

    def stop(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            lane.changed.set()

    async def run(self) -> None:
        log.info(
            "engine %s started with backends %s",
            self.owner,
            [lane.runner.name for lane in self._lanes],
        )
        try:
            async with asyncio.TaskGroup() as group:
                for lane in self._lanes:
                    group.create_task(self._dispatch(lane), name=f"dispatch-{lane.runner.name}")
                writer = group.create_task(self._write_outcomes(), name="writer")
                side = [
                    group.create_task(
                        self._every(self._settings.lease_seconds / 3, self._heartbeat)
                    ),
                    group.create_task(self._every(self._settings.sweep_interval, self._sweep)),
                    group.create_task(self._listen(), name="listen"),
                ]
                if self._webhooks is not None:  # the outbox's sender, beside the sweeper
                    side.append(group.create_task(self._webhooks.run(), name="webhooks"))
                if self._settings.retention is not None:
                    purge = self._every(self._settings.purge_interval, self._purge)
                    side.append(group.create_task(purge, name="purge"))
                await self._stop.wait()
                await self._finish_in_flight()
                self._drained.set()
                await writer
                for task in side:
                    task.cancel()
        finally:
            with contextlib.suppress(StoreUnavailable):
                released = await self._store.release_leases(self.owner, self._clock())
                if released:
                    log.info(
                        "engine %s returned %d unfinished requests to the queue",
                        self.owner,
                        released,
                    )
        log.info("engine %s stopped", self.owner)

    async def _finish_in_flight(self) -> None:
        tasks = [t for lane in self._lanes for t in lane.tasks]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._settings.shutdown_grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- claiming ------------------------------------------------------------------------

    async def _dispatch(self, lane: _Lane) -> None:
        backoff = StoreBackoff(f"claiming for backend {lane.runner.name}", self._poll_first())
        while not self._stop.is_set():
            lane.changed.clear()
            free = lane.pacer.room_for_batch()
            # Claim in groups (1/32 of the limit) rather than one slot at a time, unless the
            # backend is idle: one transaction per freed slot would cost more than the work,
            # and a freed slot idles until its group is full (measured: groups of 1/8 left
            # 0.78 of Little's law at C = 1,024 and 0.89 at 256, 1/32 0.81 and 0.92; the
            # instant mock backend ran 12.4-12.5k req/s either way).
            wanted = 1 if lane.pacer.in_flight == 0 else max(1, lane.pacer.limit // 32)
            claimed = 0
            if free >= wanted and lane.has_work and self._outcomes.qsize() < MAX_UNWRITTEN:
                try:
                    claimed = await self._claim_round(lane, free)
                except StoreUnavailable as exc:
                    await self._pause(backoff.failed(exc))
                    continue
                backoff.succeeded()
                lane.has_work = claimed > 0
                lane.pacer.batch_backlog = lane.has_work
            if claimed and lane.pacer.room_for_batch() > 0:
                continue  # there may be more to claim at once
            try:
                async with asyncio.timeout(self._settings.poll_interval):
                    await lane.changed.wait()
            except TimeoutError:  # look again now and then: other processes add work too
                lane.exhausted.clear()
                lane.has_work = True

    async def _claim_round(self, lane: _Lane, free: int) -> int:
        """Claim up to ``free`` requests, in the order the lane's planner gives; where batches
        turn out to have nothing queued, plan their slots again among the others."""
        now = self._clock()
        claimable = await self._store.claimable_batches(now)
        claimed = 0
        while claimed < free:
            batches = [b for b in claimable if b.seq not in lane.exhausted]
            plan = lane.planner.plan(batches, free - claimed, self._settings.claim_chunk)
            if not plan:
                break
            claim = await self._store.claim(
                lane.runner.name,
                list(plan),
                self.owner,
                free - claimed,
                now + self._settings.lease_seconds,
                share=plan,
            )
            lane.exhausted.update(claim.exhausted)
            lane.priorities.update((b.seq, b.priority) for b in batches)
            prepared = {}
            if lane.runner.reuse_answers != "off" and claim.requests:
                prepared = await self._prepare(lane.runner, claim.requests, batches)
            for request in claim.requests:
                self._start(lane, request, prepared.get(request.id))
            claimed += len(claim.requests)
            if not claim.exhausted:
                break
        if claimed and self._clock() - now > self._settings.lease_seconds / 2:
            self._leases_renewed = False  # the claim waited long: its leases are short
        if len(lane.priorities) > 10_000:  # forget batches no longer claimable
            lane.priorities = {b.seq: b.priority for b in claimable}
        return claimed

    def _start(
        self, lane: _Lane, request: ClaimedRequest, prepared: _Prepared | None = None
    ) -> None:
        self._held.add(request.id)
        task = asyncio.create_task(self._run_one(lane, request, lane.pacer.take(), prepared))
        lane.tasks.add(task)
        task.add_done_callback(lane.tasks.discard)

    # -- running -------------------------------------------------------------------------

    async def _run_one(
        self, lane: _Lane, request: ClaimedRequest, slot: Slot, prepared: _Prepared | None
    ) -> None:
        try:
            await slot.reacquire()  # claimed ahead of a free slot: wait for one
            if prepared is not None and prepared.key is not None and prepared.stored is None:
                outcome = await self._coalesced(lane, request, slot, prepared)
            else:
                outcome = await self._execute(lane, request, slot, prepared)
        finally:
            slot.release()
        key = (outcome.state, request.dialect)
        finished = lane.finished.get(key)
        if finished is None:
            finished = self._metrics.requests_finished.labels(lane.runner.name, *key)
            lane.finished[key] = finished
        finished.inc()
        self._outcomes.put_nowait(outcome)

    async def _coalesced(
        self, lane: _Lane, request: ClaimedRequest, slot: Slot, prepared: _Prepared
    ) -> Outcome:
        """Run a request that may be answered from another's answer, one of each answer key
        at a time: while an identical request runs here, wait for its answer (in this slot,
        as this one's own call would) and take it as a stored one; else run this one, and
        hand its answer to those waiting. An answer that failed is handed to no one: the
        next of them runs."""
        assert prepared.key is not None
        while (first := self._answering.get(prepared.key)) is not None:
            stored = await asyncio.shield(first)  # a waiter cancelled cancels only itself
            if stored is not None:
                return await self._execute(lane, request, slot, replace(prepared, stored=stored))
        answered: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._answering[prepared.key] = answered
        line = None
        try:
            outcome = await self._execute(lane, request, slot, prepared)
            if outcome.state is RequestState.SUCCEEDED:
                line = outcome.line
            return outcome
        finally:
            del self._answering[prepared.key]
            answered.set_result(line)

    async def _execute(
        self, lane: _Lane, request: ClaimedRequest, slot: Slot, prepared: _Prepared | None
    ) -> Outcome:
        """Run one request; ``prepared``: it decoded, with its answer key and stored answer,
        where its backend may reuse one. Its result line is in its batch's dialect
        (``request.endpoint`` set: an OpenAI request, its line in OpenAI's output or error
        format)."""
        runner = lane.runner
        dialect = _OPENAI if request.endpoint is not None else _MESSAGES
        custom_id = request.custom_id
        if request.attempt > self._settings.max_attempts:
            log.error(
                "request %s of batch %s was claimed %d times without a result; giving up",
                custom_id,
                request.batch_seq,
                request.attempt - 1,
            )
            reason = (
                f"gave up after {request.attempt - 1} attempts: "
                "the worker running this request stopped each time before it finished"
            )
            return Outcome(
                request, RequestState.ERRORED, dialect.failed(custom_id, BatchdError(reason))
            )
        model = ""
        try:
            if prepared is None:
                decoded, key, stored = dialect.decode(request), None, None
            else:
                decoded, key, stored = prepared.decoded, prepared.key, prepared.stored
            model = decoded.model
            if stored is not None:
                self._metrics.answers_reused.labels(runner.name, request.dialect).inc()
                answer = dialect.reused(stored, model)
                line = dialect.succeeded(custom_id, answer)
                usage = dialect.usage(answer)  # counted like any succeeded result's
                return Outcome(
                    request,
                    RequestState.SUCCEEDED,
                    line,
                    model=model,
                    usage=usage,
                    answer_key=key,
                    reused=True,
                )
            priority = lane.priorities.get(request.batch_seq, 0)
            answer = await self._call(runner, request, decoded, slot, priority)
            line = dialect.succeeded(custom_id, answer)
        except (InvalidRequest, UpstreamError) as exc:
            return Outcome(
                request, RequestState.ERRORED, dialect.failed(custom_id, exc), model=model
            )
        except Exception:  # one broken request must not take the engine down
            log.exception("request %s of batch %s failed", custom_id, request.batch_seq)
            error = BatchdError("internal error while running the request")
            return Outcome(
                request, RequestState.ERRORED, dialect.failed(custom_id, error), model=model
            )
        usage = dialect.usage(answer)
        return Outcome(
            request, RequestState.SUCCEEDED, line, model=model, usage=usage, answer_key=key
        )

    @staticmethod
    async def _call(
        runner: BackendRunner,
        request: ClaimedRequest,
        decoded: _Decoded,
        slot: Slot,
        priority: int,
    ) -> dict[str, Any]:
        """The upstream's answer to one request, in its dialect."""
        with owned_by(f"batch:{request.batch_seq}"):  # the engine knows no key
            if decoded.params is not None:
                return await runner.run(decoded.params, request.params, slot, priority=priority)
            assert request.endpoint is not None
            assert decoded.body is not None
            return await runner.run_openai(
                request.endpoint, decoded.body, request.params, slot, priority=priority
            )

    async def _prepare(
        self, runner: BackendRunner, requests: list[ClaimedRequest], batches: list[Claimable]
    ) -> dict[int, _Prepared]:
        """Each claimed request decoded (those that decode), with its answer key where it may
        be answered from a stored answer, and the stored answers, looked up in one query.
        ``batches``: those claimed from (their workspaces key the answers). While the store
        is unavailable, no answer is found and none is kept: those requests run upstream."""
        workspaces = {b.seq: b.workspace for b in batches}
        prepared: dict[int, _Prepared] = {}
        for request in requests:
            try:
                decoded = (_OPENAI if request.endpoint is not None else _MESSAGES).decode(request)
            except InvalidRequest:  # params that no longer decode: run (and fail) as usual
                continue
            key = None
            if reusable(runner.reuse_answers, decoded.deterministic):
                sent = decoded.body
                if sent is None:  # a Messages request: its params as sent, not as decoded
                    sent = _body_decoder.decode(request.params)
                workspace = workspaces[request.batch_seq]
                key = answer_key(workspace, runner.name, sent, request.endpoint)
            prepared[request.id] = _Prepared(decoded, key)
        keys = [p.key for p in prepared.values() if p.key is not None]
        try:
            stored = await self._store.find_answers(keys)
        except StoreUnavailable as exc:
            log.warning("answer reuse skipped for %d requests: %s", len(keys), exc)
            return {i: _Prepared(p.decoded) for i, p in prepared.items()}
        return {
            i: _Prepared(p.decoded, p.key, stored.get(p.key)) if p.key is not None else p
            for i, p in prepared.items()
        }

    # -- recording -----------------------------------------------------------------------

    async def _write_outcomes(self) -> None:
        """Write results in groups; while the store is unavailable, keep them and try again.
        Once the engine is stopping, it tries for ``shutdown_grace`` more, then gives up on
        what is left: those requests run again after their leases expire."""
        backoff = StoreBackoff("recording results", self._poll_first())
        loop = asyncio.get_running_loop()
        give_up_at = math.inf
        while group := await self._next_group():
            while True:
                try:
                    recorded = await self._store.record(self.owner, group, self._clock())
                    break
                except StoreUnavailable as exc:
                    if self._drained.is_set():
                        give_up_at = min(give_up_at, loop.time() + self._settings.shutdown_grace)
                        if loop.time() > give_up_at:
                            lost = len(group) + self._outcomes.qsize()
                            log.error("stopping with %d results unwritten: %s", lost, exc)
                            return
                    await asyncio.sleep(backoff.failed(exc))
            backoff.succeeded()
            self._held.difference_update(o.request.id for o in group)
            self._metrics.count_ended(recorded.ended_dialects)
            if recorded.applied < len(group):
                fenced = len(group) - recorded.applied
                log.warning("%d results were fenced off (lease lost)", fenced)
            if self._outcomes.qsize() < MAX_UNWRITTEN:
                for lane in self._lanes:
                    lane.changed.set()

    async def _next_group(self) -> list[Outcome]:
        """Up to WRITE_GROUP outcomes; none once the engine is drained and all are written."""
        if self._outcomes.empty():
            getter = asyncio.ensure_future(self._outcomes.get())
            drained = asyncio.ensure_future(self._drained.wait())
            await asyncio.wait({getter, drained}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
            if not getter.done():
                getter.cancel()
                return []
            group = [getter.result()]
        else:
            group = [self._outcomes.get_nowait()]
        while len(group) < WRITE_GROUP and not self._outcomes.empty():
            group.append(self._outcomes.get_nowait())
        return group

    # -- side tasks ----------------------------------------------------------------------

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        backoff = StoreBackoff(step.__name__.strip("_"), interval)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                await step()
            except StoreUnavailable as exc:
                delay = max(interval, backoff.failed(exc))
            else:
                backoff.succeeded()
                delay = interval

    def _poll_first(self) -> float:
        """The first retry delay of a loop that failed on the store."""
        return self._settings.poll_interval / 4

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the engine stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _listen(self) -> None:
        """Wake the dispatchers when the store hears of new work (PostgreSQL: NOTIFY)."""
        while True:
            if await self._store.wait_for_work(self._settings.poll_interval):
                self.wake()

    async def _heartbeat(self) -> None:
        """Renew the leases of the requests we hold; not those of a claim whose answer was
        lost with the connection: they must expire and be claimed again, or they would hang."""
        self._leases_renewed = False
        lease = self._settings.lease_seconds
        for _ in range(3):  # again while the write waited so long that its deadline is near
            started = self._clock()
            await self._renew(started)
            if self._clock() - started < lease / 2:
                self._leases_renewed = True
                return

    async def _renew(self, now: float) -> None:
        await self._store.renew_leases(
            self.owner, now + self._settings.lease_seconds, sorted(self._held)
        )
        self._renewed_at = now

    async def _sweep(self) -> None:
        if not self._leases_renewed:  # after an outage our own leases look lost: renew first
            await self._heartbeat()
        now = self._clock()
        if self._held and now - self._renewed_at > self._settings.lease_seconds / 2:
            # The heartbeat is late by half a lease: this process was paused, or its clock
            # jumped. Our calls are still running, so our leases are renewed before the
            # sweep looks at them, as of the same moment: a request whose call outlives
            # its lease is renewed, never run again beside itself.
            await self._renew(now)
        sweep = await self._store.sweep(now)
        self._metrics.count_ended(sweep.ended_dialects)
        if sweep.requeued:
            log.info("%d requests lost their lease and are queued again", sweep.requeued)
            self.wake()

    async def _purge(self) -> None:
        """Delete the requests of ended batches past retention, and the files past their
        expires_at, until none is left."""
        assert self._settings.retention is not None
        while not self._stop.is_set():
            now = self._clock()
            purge = await self._store.purge(
                now - self._settings.retention, now, self._settings.purge_chunk
            )
            if purge.requests or purge.batches or purge.files:
                log.info(
                    "deleted %d requests of batches past retention (%d batches done) and "
                    "%d expired files, %d bytes given back",
                    purge.requests,
                    purge.batches,
                    purge.files,
                    purge.reclaimed_bytes,
                )
            if not purge.batches:
                return


def _decode_messages(request: ClaimedRequest) -> _Decoded:
    params = stored_params(request.params)
    return _Decoded(params.model, params.temperature == 0, params=params)


def _decode_openai(request: ClaimedRequest) -> _Decoded:
    """An OpenAI request's stored body, decoded."""
    try:
        body = _body_decoder.decode(request.params)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"stored body no longer decodes: {exc}") from None
    model = body.get("model")
    temperature = body.get("temperature")
    deterministic = request.endpoint == OPENAI_EMBEDDINGS or (
        type(temperature) in (int, float) and temperature == 0
    )
    return _Decoded(model if isinstance(model, str) else "", deterministic, body=body)


def openai_usage_of(body: dict[str, Any]) -> TokenUsage:
    """The tokens an OpenAI response body's ``usage`` reports, as batchd counts them:
    ``prompt_tokens`` as input, ``completion_tokens`` as output (none for embeddings),
    ``prompt_tokens_details.cached_tokens`` as cache reads; absent figures count as 0."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return TokenUsage()
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return TokenUsage(
        _count(usage.get("prompt_tokens")),
        _count(usage.get("completion_tokens")),
        _count(cached),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def usage_of(message: dict[str, Any]) -> TokenUsage:
    """The tokens a message's ``usage`` reports (absent figures count as 0)."""
    usage = message.get("usage")
    if not isinstance(usage, dict):
        return TokenUsage()
    return TokenUsage(
        _count(usage.get("input_tokens")),
        _count(usage.get("output_tokens")),
        _count(usage.get("cache_read_input_tokens")),
    )


_MESSAGES = _Dialect(
    _decode_messages,
    usage_of,
    reused_message,
    succeeded_line,
    lambda custom_id, exc: errored_line(custom_id, exc.error_type, exc.message),
)
_OPENAI = _Dialect(
    _decode_openai,
    openai_usage_of,
    lambda stored, _model: reused_body(stored),  # the model its upstream named, as stored
    output_line,
    refused_line,
)
