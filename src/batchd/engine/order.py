"""Which batches a backend's free slots go to: priorities, fair share, deadlines.

Every claim round, ``ClaimPlanner.plan`` hands each free slot of a backend to one batch:

1. **Priority** (``batchd-priority``: high, normal, low): the highest level with work gets
   the slot, except that every ``LOWER_SHARE``-th slot reaching a level goes on to the
   levels below it while they have work. So higher priorities go first, and a lower one is
   never starved: it keeps at least 1/8 of the slots the levels above leave it (1/64 two
   levels down).
2. **Fair share** within a level: round-robin over the workspaces with work, so one
   workspace's 100,000 requests or hundreds of batches do not hold back another's small
   batch; then round-robin over that workspace's batches.
3. **Deadlines** within a workspace's batches of one level: earliest deadline first. Batches
   whose deadlines lie within ``DEADLINE_TIE`` of the earliest share the slots round-robin,
   so a small batch submitted just after a big one (both with the default window) still
   starts at once.

The planner keeps its round-robin positions between rounds (one planner per backend and
worker); it is pure otherwise: batches and a number of slots in, a claim plan out.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import TypeVar

from batchd.store import Claimable

T = TypeVar("T", str, int)

LOWER_SHARE = 8
DEADLINE_TIE = 900.0  # seconds


def _after(items: Sequence[T], last: T | None) -> int:
    """The index of the first item after ``last`` in a sorted sequence, cycling."""
    if last is None:
        return 0
    index = bisect.bisect_right(items, last)
    return index if index < len(items) else 0


class ClaimPlanner:
    def __init__(self) -> None:
        self._reached: Counter[int] = Counter()  # slots that reached each priority level
        self._last_workspace: dict[int, str] = {}  # per level: the workspace served last
        self._last_batch: dict[tuple[int, str], int] = {}  # per level and workspace

    def plan(self, batches: Sequence[Claimable], free: int, cap: int) -> dict[int, int]:
        """How many requests to claim from which batch (at most ``cap`` from one), in the
        order they should be claimed."""
        if not batches or free <= 0:
            return {}
        fronts = _fronts(batches)
        levels = sorted(fronts, reverse=True)
        workspaces = {level: sorted(fronts[level]) for level in levels}
        if len(batches) == 1:  # every slot goes to it: no need to hand them out one by one
            [[level, [workspace]]] = workspaces.items()
            self._last_workspace[level] = workspace
            self._last_batch[(level, workspace)] = batches[0].seq
            return {batches[0].seq: min(free, cap)}
        plan: dict[int, int] = {}
        for _ in range(free):
            level = self._level(levels)
            names = workspaces[level]
            workspace = names[_after(names, self._last_workspace.get(level))]
            seqs = fronts[level][workspace]
            seq = seqs[_after(seqs, self._last_batch.get((level, workspace)))]
            self._last_workspace[level] = workspace
            self._last_batch[(level, workspace)] = seq
            plan[seq] = plan.get(seq, 0) + 1
        return {seq: min(n, cap) for seq, n in plan.items()}

    def _level(self, levels: list[int]) -> int:
        """The priority level the next slot goes to."""
        for level in levels[:-1]:
            self._reached[level] += 1
            if self._reached[level] % LOWER_SHARE:
                return level
        return levels[-1]  # every LOWER_SHARE-th slot of each level above came down


def _fronts(batches: Sequence[Claimable]) -> dict[int, dict[str, list[int]]]:
    """Per priority level and workspace, the batches of its earliest deadlines (within
    DEADLINE_TIE of the first), by seq."""
    grouped: defaultdict[int, defaultdict[str, list[Claimable]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for batch in batches:
        grouped[batch.priority][batch.workspace].append(batch)
    fronts: dict[int, dict[str, list[int]]] = {}
    for level, by_workspace in grouped.items():
        fronts[level] = {}
        for workspace, mine in by_workspace.items():
            first = min(b.deadline for b in mine)
            fronts[level][workspace] = sorted(
                b.seq for b in mine if b.deadline < first + DEADLINE_TIE
            )
    return fronts
