"""Batch ids: sortable by creation time, and no id tells its neighbours."""

from __future__ import annotations

import itertools

import pytest

from batchd.ids import Minter, batch_id, new_batch_id, renewed_id

MS = 1_000_000  # nanoseconds


def test_ids_minted_in_one_millisecond_are_ordered_but_not_consecutive() -> None:
    minter = Minter(clock_ns=lambda: 1_800_000_000_000 * MS)
    values = [minter.next() for _ in range(1000)]
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert min(steps) > 2**8  # a random step of up to 2**40, never 1
    ids = [batch_id(v) for v in values]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_sort_by_the_millisecond_they_were_minted_in() -> None:
    now = [1_800_000_000_000 * MS]
    minter = Minter(clock_ns=lambda: now[0])
    earlier = [batch_id(minter.next()) for _ in range(3)]
    now[0] += MS
    later = batch_id(minter.next())
    assert max(earlier) < later
    assert later[:19] > earlier[0][:19]  # the first 10 characters after the prefix: the time


def test_batch_ids_have_the_api_shape() -> None:
    minted = new_batch_id()
    assert minted.startswith("msgbatch_")
    assert len(minted) == len("msgbatch_") + 26


@pytest.mark.parametrize(
    ("old", "prefix"),
    [
        ("chatcmpl-7f3a9c", "chatcmpl-"),  # a chat completion's
        ("cmpl-7f3a9c", "cmpl-"),  # a legacy completion's
        ("resp_67ccd2bed1ec8190", "resp_"),  # a response's (the first separator counts)
        ("chatcmpl_tool-x", "chatcmpl_"),  # whichever separator comes first
        ("7f3a9c", ""),  # no prefix: all new characters
    ],
)
def test_a_renewed_id_keeps_the_old_ones_prefix(old: str, prefix: str) -> None:
    renewed = renewed_id(old)
    assert renewed.startswith(prefix)
    assert len(renewed) == len(prefix) + 24
    assert renewed != renewed_id(old)
