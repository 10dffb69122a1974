"""The prefix key (``batchd/prefix.py``): requests whose prompts start alike sort together."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from batchd.prefix import PARTS, prefix_key
from batchd.validation import check_params

SYSTEM_A, SYSTEM_B = "You are a careful reviewer.", "You translate to French."


def key(system: str | None = None, *turns: str, **extra: Any) -> str:
    body: dict[str, Any] = {"model": "m", "max_tokens": 8, **extra}
    roles = ["user", "assistant"]
    body["messages"] = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
    if system is not None:
        body["system"] = system
    return prefix_key(check_params(msgspec.json.encode(body)))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # only the last turn differs: the same key
        (key(SYSTEM_A, "q1"), key(SYSTEM_A, "q2"), True),
        # another system prompt: another key
        (key(SYSTEM_A, "q1"), key(SYSTEM_B, "q1"), False),
        # sampling settings do not count
        (key(SYSTEM_A, "q1", temperature=0), key(SYSTEM_A, "q1"), True),
        # the same first turns: the same key, whatever the question
        (key(None, "t1", "a1", "q1"), key(None, "t1", "a1", "q2"), True),
        # other tools: another key
        (key(SYSTEM_A, "q", tools=[{"name": "x", "input_schema": {}}]), key(SYSTEM_A, "q"), False),
    ],
)
def test_equal_keys_for_equal_prefixes(a: str, b: str, same: bool) -> None:
    assert (a == b) is same


def test_sorted_keys_group_each_system_prompt_and_its_shared_turns() -> None:
    requests = [
        ("a/x", key(SYSTEM_A, "x1", "ok", "q")),
        ("b", key(SYSTEM_B, "q")),
        ("a/y", key(SYSTEM_A, "y1", "ok", "q")),
        ("a/x", key(SYSTEM_A, "x1", "ok", "other q")),
        ("b", key(SYSTEM_B, "other q")),
        ("a/y", key(SYSTEM_A, "y1", "ok", "other q")),
    ]
    groups = [group for group, _ in sorted(requests, key=lambda r: r[1])]
    # each group is one run, and the two runs under system A are next to each other
    runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    assert sorted(runs) == ["a/x", "a/y", "b"]
    assert abs(runs.index("a/x") - runs.index("a/y")) == 1


def test_a_key_is_hex_and_bounded() -> None:
    long = key(SYSTEM_A, *[f"turn {i}" for i in range(41)])
    assert len(long) == 8 * PARTS
    assert set(long) <= set("0123456789abcdef")
