"""The shared parts of the local engines: prefixes, grouping jobs, stop outcomes, the batcher."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from batchd.backends.local.backend import stop_outcome
from batchd.backends.local.batching import (
    MIN_SHARED,
    PaddedBatcher,
    common_length,
    length_chunks,
    pick_group,
    prefix_clusters,
    shared_prefix,
)
from batchd.backends.local.generation import Finish, Generated, Job, Sampling
from batchd.backends.local.transformers_engine import cpu_threads

GREEDY = Sampling(0.0)
WARM = Sampling(0.7, top_p=0.9)


def job(length: int, max_tokens: int = 16, sampling: Sampling = GREEDY) -> Job:
    return Job(list(range(length)), max_tokens, (), sampling)


@pytest.mark.parametrize(
    ("waiting", "size", "expected"),
    [
        # nothing waiting
        ([], 4, []),
        # fewer than the size: all of them
        ([job(5), job(9)], 4, [0, 1]),
        # the oldest always, then the nearest in length
        ([job(10), job(50), job(11), job(12), job(90)], 3, [0, 2, 3]),
        # max_tokens counts as distance too
        ([job(10, 16), job(10, 500), job(12, 16)], 2, [0, 2]),
        # only jobs sampled like the oldest
        ([job(10, sampling=WARM), job(10), job(30, sampling=WARM)], 4, [0, 2]),
    ],
)
def test_pick_group(waiting: list[Job], size: int, expected: list[int]) -> None:
    assert pick_group(waiting, size) == expected


LONG = list(range(100, 100 + MIN_SHARED))  # a prefix long enough to share


def prefixed(head: list[int], tail: list[int]) -> Job:
    return Job(head + tail, 16, (), GREEDY)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # equal
        ([1, 2, 3], [1, 2, 3], 3),
        # one a prefix of the other
        ([1, 2], [1, 2, 3], 2),
        # differ at once
        ([1, 2], [2, 2], 0),
        # differ in the middle of a long run
        (list(range(1000)), [*range(700), -1], 700),
    ],
)
def test_common_length(a: list[int], b: list[int], expected: int) -> None:
    assert common_length(a, b) == expected


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        # one prompt: nothing to share
        ([[*LONG, 1]], 0),
        # a long common prefix
        ([[*LONG, 1], [*LONG, 2, 3]], MIN_SHARED),
        # each prompt keeps one token of its own
        ([[*LONG, 1], [*LONG, 1]], MIN_SHARED),
        # a short common prefix is not worth it
        ([[*LONG[:-1], 1], [*LONG[:-1], 2]], 0),
        # the least shared pair decides
        ([[*LONG, 5, 1], [*LONG, 5, 2], [*LONG, 6]], MIN_SHARED),
    ],
)
def test_shared_prefix(prompts: list[list[int]], expected: int) -> None:
    assert shared_prefix(prompts) == expected


OTHER = [-n for n in LONG]  # as long, sharing nothing with LONG


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        # nothing shared
        ([[1, 2], [3, 4]], []),
        # two pairs, interleaved: each pair found, with what it shares
        (
            [[*LONG, 1], [*OTHER, 1], [*LONG, 2, 2], [*OTHER, 3]],
            [([0, 2], MIN_SHARED), ([1, 3], MIN_SHARED)],
        ),
        # a group shares what its least similar neighbours share
        ([[*LONG, 5, 1], [*LONG, 6], [*LONG, 5, 2]], [([0, 1, 2], MIN_SHARED)]),
        # a lone prompt among them is in no group
        ([[*LONG, 1], [9], [*LONG, 2]], [([0, 2], MIN_SHARED)]),
    ],
)
def test_prefix_clusters(prompts: list[list[int]], expected: list[tuple[list[int], int]]) -> None:
    assert prefix_clusters(prompts) == expected


def test_pick_group_by_prefix_keeps_to_those_sharing_the_oldests_prefix() -> None:
    other = [-n for n in LONG]
    waiting = [prefixed(LONG, [1]), prefixed(other, [1]), prefixed(LONG, [2, 2]), job(34)]
    assert pick_group(waiting, 4, by_prefix=True) == [0, 2]
    assert pick_group(waiting, 4) == [0, 1, 2, 3]


def test_pick_group_by_prefix_falls_back_to_lengths_when_nothing_shares() -> None:
    waiting = [prefixed(LONG, [1]), job(40), job(90)]
    assert pick_group(waiting, 2, by_prefix=True) == [0, 1]


@pytest.mark.parametrize(
    ("text", "finish", "stops", "expected"),
    [
        # the model ended its turn
        ("abc", Finish.EOS, (), ("abc", "end_turn", None)),
        # max_tokens reached
        ("abc", Finish.LENGTH, ("x",), ("abc", "max_tokens", None)),
        # cut before the stop sequence
        ("hello world", Finish.STOP, ("wor",), ("hello ", "stop_sequence", "wor")),
        # the earliest of several wins, whatever their order in the request
        ("a-b+c", Finish.STOP, ("+", "-"), ("a", "stop_sequence", "-")),
        # at the same place, the first listed wins
        ("ab", Finish.STOP, ("ab", "a"), ("", "stop_sequence", "ab")),
    ],
)
def test_stop_outcome(
    text: str, finish: Finish, stops: tuple[str, ...], expected: tuple[str, str, str | None]
) -> None:
    assert stop_outcome(text, finish, stops) == expected


async def test_batcher_groups_waiting_jobs_and_answers_each() -> None:
    sizes: list[int] = []

    def run(jobs: Sequence[Job]) -> list[Generated]:
        sizes.append(len(jobs))
        return [Generated(j.prompt[:1], Finish.LENGTH) for j in jobs]

    batcher = PaddedBatcher(run, max_batch=4)
    batcher.start()
    try:
        answers = await asyncio.gather(*(batcher.generate(job(n + 1)) for n in range(10)))
    finally:
        await batcher.close()
    assert [a.tokens for a in answers] == [[0]] * 10
    assert sum(sizes) == 10
    assert max(sizes) == 4


async def test_a_failing_batch_fails_its_jobs_only() -> None:
    def run(jobs: Sequence[Job]) -> list[Generated]:
        if any(len(j.prompt) == 3 for j in jobs):
            raise RuntimeError("engine broke")
        return [Generated([], Finish.EOS) for _ in jobs]

    batcher = PaddedBatcher(run, max_batch=1)
    batcher.start()
    try:
        bad, good = await asyncio.gather(
            batcher.generate(job(3)), batcher.generate(job(5)), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert isinstance(bad, RuntimeError)
    assert good == Generated([], Finish.EOS)


@pytest.mark.parametrize(
    ("configured", "cores", "expected"),
    [
        # all cores but one for torch
        (None, 16, 15),
        # never fewer than one
        (None, 1, 1),
        # cores unknown
        (None, None, 1),
        # as configured
        (4, 2, 4),
    ],
)
def test_cpu_threads(configured: int | None, cores: int | None, expected: int) -> None:
    assert cpu_threads(configured, cores) == expected


@pytest.mark.parametrize(
    ("lengths", "pass_tokens", "expected"),
    [
        # nothing to prefill
        ([], 128, []),
        # like lengths: one pass, shortest first
        ([90, 88, 92], 128, [[1, 0, 2]]),
        # a long prompt among short ones: padding the short ones to it costs more than a pass
        ([10, 500, 12, 11], 128, [[0, 3, 2], [1]]),
        # passes that cost nothing: each length apart, equal ones together
        ([30, 10, 20, 10], 0, [[1, 3], [2], [0]]),
    ],
)
def test_length_chunks(lengths: list[int], pass_tokens: int, expected: list[list[int]]) -> None:
    assert length_chunks(lengths, pass_tokens) == expected
