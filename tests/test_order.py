"""The claim planner: which batches a backend's free slots go to (engine/order.py)."""

from __future__ import annotations

from collections import Counter

from batchd.engine.order import DEADLINE_TIE, LOWER_SHARE, ClaimPlanner
from batchd.store import Claimable

DAY = 24 * 3600.0


def _batch(seq: int, workspace: str = "ws", priority: int = 0, deadline: float = DAY) -> Claimable:
    return Claimable(seq, workspace, priority, deadline)


def _slots(planner: ClaimPlanner, batches: list[Claimable], n: int) -> list[int]:
    """The batch each of ``n`` slots goes to, one slot per round (a saturated backend)."""
    return [next(iter(planner.plan(batches, 1, cap=64))) for _ in range(n)]


def test_a_higher_priority_goes_first_and_a_lower_one_keeps_a_share() -> None:
    served = _slots(ClaimPlanner(), [_batch(1, priority=-1), _batch(2, priority=1)], 32)
    assert Counter(served) == {2: 32 - 32 // LOWER_SHARE, 1: 32 // LOWER_SHARE}
    assert served[LOWER_SHARE - 1] == 1  # the low batch's first slot: the 8th, not the last


def test_three_levels_each_progress() -> None:
    batches = [_batch(1, priority=-1), _batch(2, priority=0), _batch(3, priority=1)]
    served = Counter(_slots(ClaimPlanner(), batches, LOWER_SHARE**2))
    assert served[3] > served[2] > served[1] > 0


def test_workspaces_share_round_robin_whatever_their_number_of_batches() -> None:
    many = [_batch(seq, "big") for seq in range(1, 201)]
    served = _slots(ClaimPlanner(), [*many, _batch(500, "small")], 10)
    assert served.count(500) == 5  # every other slot, beside 200 batches of another workspace
    assert len(set(served) - {500}) == 5  # and the big workspace's batches take turns


def test_the_earliest_deadline_goes_first_within_a_workspace() -> None:
    batches = [_batch(1, deadline=DAY), _batch(2, deadline=3600.0)]
    assert _slots(ClaimPlanner(), batches, 4) == [2, 2, 2, 2]


def test_deadlines_close_together_share_round_robin() -> None:
    batches = [_batch(1, deadline=DAY), _batch(2, deadline=DAY + DEADLINE_TIE / 2)]
    assert _slots(ClaimPlanner(), batches, 4) == [1, 2, 1, 2]


def test_one_round_spreads_its_slots_and_caps_each_batch() -> None:
    plan = ClaimPlanner().plan([_batch(1), _batch(2), _batch(3)], 300, cap=64)
    assert plan == {1: 64, 2: 64, 3: 64}


def test_a_lone_batch_takes_every_slot_up_to_the_cap_and_the_turns_go_on_from_it() -> None:
    planner = ClaimPlanner()
    assert planner.plan([_batch(2)], 1024, cap=256) == {2: 256}
    assert _slots(planner, [_batch(1), _batch(2), _batch(3)], 3) == [3, 1, 2]
