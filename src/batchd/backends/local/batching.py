"""Prefixes of token prompts: how long two share, what a group shares, and which new
rows share a prefix worth computing once (pure functions, for the engines).

A prefix shorter than MIN_SHARED tokens is not worth a pass of its own: its keys and
values cost about as much to copy around as to compute.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

MIN_SHARED = 32  # tokens


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
