"""Token prefixes and padded batching, the shared parts of the local engines.

Prefixes (pure functions): how long two prompts share, what a group shares, and which
new rows share a prefix worth computing once (``prefix_clusters``, for the transformers
engine's prefix cache). A prefix shorter than MIN_SHARED tokens is not worth a pass of
its own. ``length_chunks`` splits new rows into prefill passes of like lengths, so that
little padding is computed.

Dynamic padded batching (``PaddedBatcher``, the embeddings engine's): jobs arrive one by
one (one per request in flight); a scheduler task takes a group from those waiting
whenever the engine is free, runs it as one padded batch in a thread (the event loop
stays free), and resolves each job's future. A group holds jobs with the same sampling
settings, starts with the oldest waiting job (nothing waits forever) and takes the jobs
closest to it in prompt length and ``max_tokens``, so that little padding is computed;
with ``by_prefix``, only the jobs sharing a long prefix with the oldest, where any do.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from batchd.backends.local.generation import Job

log = logging.getLogger(__name__)

R = TypeVar("R")  # what the engine makes of one job: Generated tokens, an embedding
RunBatch = Callable[[Sequence[Job]], list[R]]


MIN_SHARED = 32  # tokens: a shorter common prefix is not worth a pass of its own
# a forward pass's fixed cost, in padded prompt tokens (measured on the 2-core CPU, tiny
# model: about 2 ms a pass against 20 us a prompt token)
PASS_TOKENS = 128


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share (slice comparisons: C speed)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """The prefix length all prompts share, leaving each at least one token of its own;
    0 when below MIN_SHARED or for a single prompt."""
    if len(prompts) < 2:
        return 0
    first = prompts[0]
    shared = min(len(p) - 1 for p in prompts)
    for prompt in prompts[1:]:
        shared = min(shared, common_length(first, prompt))
    return shared if shared >= MIN_SHARED else 0


def pick_group(waiting: Sequence[Job], size: int, *, by_prefix: bool = False) -> list[int]:
    """Indexes of the next group: the oldest job and its nearest compatible neighbours;
    with ``by_prefix``, only those sharing a long prefix with it, where there are any."""
    if not waiting:
        return []
    first = waiting[0]
    same = [i for i, job in enumerate(waiting) if job.sampling == first.sampling]
    if by_prefix and len(first.prompt) > MIN_SHARED:
        sharing = [
            i
            for i in same[1:]
            if len(waiting[i].prompt) > MIN_SHARED
            and common_length(first.prompt, waiting[i].prompt) >= MIN_SHARED
        ]
        if sharing:
            same = [0, *sharing]

    def distance(i: int) -> tuple[int, int]:
        job = waiting[i]
        return (
            abs(len(job.prompt) - len(first.prompt)) + abs(job.max_tokens - first.max_tokens),
            i,
        )

    return sorted(sorted(same, key=distance)[:size])


@dataclass(slots=True)
class _Waiting(Generic[R]):
    job: Job
    future: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class PaddedBatcher(Generic[R]):
    """Runs jobs in groups of up to ``max_batch`` through ``run_batch`` (called in a thread).

    ``R`` is what the engine makes of a job: ``Generated`` tokens for generation, a vector
    for embeddings (``local/embedding_engine.py``), grouped and scheduled alike."""

    def __init__(self, run_batch: RunBatch[R], max_batch: int, *, by_prefix: bool = False) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._by_prefix = by_prefix
        self._waiting: list[_Waiting[R]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._schedule(), name="padded-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiting in self._waiting:
            waiting.future.cancel()

    async def generate(self, job: Job) -> R:
        waiting: _Waiting[R] = _Waiting(job)
        self._waiting.append(waiting)
        self._arrived.set()
        try:
            return await asyncio.shield(waiting.future)
        except asyncio.CancelledError:
            if waiting in self._waiting:  # not started yet: nobody needs the answer
                self._waiting.remove(waiting)
            job.abandoned.set()  # started: its row may end at the next token
            raise

    async def _schedule(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._waiting:
                await self._run_next()

    async def _run_next(self) -> None:
        jobs = [w.job for w in self._waiting]
        picked = pick_group(jobs, self._max_batch, by_prefix=self._by_prefix)
        group = [self._waiting[i] for i in picked]
        chosen = set(picked)
        self._waiting = [w for i, w in enumerate(self._waiting) if i not in chosen]
        try:
            results = await asyncio.to_thread(self._run_batch, [w.job for w in group])
        except Exception as exc:  # the engine failed: every job of the group fails with it
            log.exception("a local batch of %d failed", len(group))
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, result in zip(group, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)


def length_chunks(lengths: Sequence[int], pass_tokens: int = PASS_TOKENS) -> list[list[int]]:
    """Indexes of ``lengths`` in groups to prefill one pass each, shortest first: the split
    of the sorted lengths with the least padded tokens (a group costs its size times its
    longest) plus ``pass_tokens`` a pass."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    # best[j]: the least cost of the first j; cut[j]: where its last group starts
    best, cut = [0] + [0] * len(ordered), [0] * (len(ordered) + 1)
    for j in range(1, len(ordered) + 1):
        best[j], cut[j] = min(
            (best[i] + (j - i) * ordered[j - 1] + pass_tokens, i) for i in range(j)
        )
    groups, j = [], len(ordered)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def prefix_clusters(prompts: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """Groups of two or more prompts sharing at least MIN_SHARED leading tokens, as (their
    indexes, the length all of them share), by their first index; each prompt in one group
    at most. In sorted order, the prefix a run of prompts shares is the least of its
    neighbours' (a trie's depth-first order), so one pass over neighbours finds them."""
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    groups: list[tuple[list[int], int]] = []
    run = order[:1]
    for before, i in itertools.pairwise(order):
        if common_length(prompts[before], prompts[i]) >= MIN_SHARED:
            run.append(i)
            continue
        if len(run) > 1:
            groups.append((sorted(run), shared_prefix([prompts[j] for j in run])))
        run = [i]
    if len(run) > 1:
        groups.append((sorted(run), shared_prefix([prompts[j] for j in run])))
    return sorted((group, shared) for group, shared in groups if shared)
