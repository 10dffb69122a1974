"""The shared parts of the local engines: prefixes, stop outcomes, thread counts."""

from __future__ import annotations

import pytest

from batchd.backends.local.backend import stop_outcome
from batchd.backends.local.batching import (
    MIN_SHARED,
    common_length,
    prefix_clusters,
    shared_prefix,
)
from batchd.backends.local.generation import Finish
from batchd.backends.local.transformers_engine import cpu_threads

LONG = list(range(100, 100 + MIN_SHARED))  # a prefix long enough to share


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
