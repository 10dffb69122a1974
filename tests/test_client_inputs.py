"""Reading request files: three line shapes, filled-in defaults, problems named by line."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from batchd.client.errors import BadInput
from batchd.client.inputs import Defaults, Requests, chunks, parse_lines, read_requests

MOCK = Defaults(model="mock", max_tokens=16)


def _parse(*lines: str, defaults: Defaults = MOCK) -> list[dict[str, object]]:
    requests = parse_lines([line.encode() + b"\n" for line in lines], defaults)
    return [msgspec.json.decode(item) for item in requests.encoded]


def _user(text: str) -> dict[str, object]:
    return {"model": "mock", "max_tokens": 16, "messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # a plain prompt
        ("What is 2+2?", {"custom_id": "line-1", "params": _user("What is 2+2?")}),
        # a JSON string is a prompt too, unquoted
        ('"quoted"', {"custom_id": "line-1", "params": _user("quoted")}),
        # text that merely starts with a quote is still a prompt
        ('"Hi" she said', {"custom_id": "line-1", "params": _user('"Hi" she said')}),
        # bare params: model and max_tokens filled in
        (
            '{"messages": [{"role": "user", "content": "x"}]}',
            {"custom_id": "line-1", "params": _user("x")},
        ),
        # a full request keeps its id and its own values
        (
            '{"custom_id": "a", "params": {"model": "m2", "max_tokens": 3, "messages": []}}',
            {"custom_id": "a", "params": {"model": "m2", "max_tokens": 3, "messages": []}},
        ),
    ],
)
def test_line_shapes(line: str, expected: dict[str, object]) -> None:
    assert _parse(line) == [expected]


@pytest.mark.parametrize(
    ("lines", "defaults", "line", "problem"),
    [
        # broken JSON
        (["ok", '{"custom_id": "a",'], MOCK, 2, "invalid JSON"),
        # a prompt with no model to send it to
        (["", "hello"], Defaults(), 2, "needs --model"),
        # bare params with no model anywhere
        (['{"messages": []}'], Defaults(), 1, 'no "model"'),
        # an object of no known shape
        (['{"prompt": "hi"}'], MOCK, 1, "Messages params"),
        # an id the API would refuse
        (['{"custom_id": "a b", "params": {}}'], MOCK, 1, "custom_id must be"),
        # params that are not an object
        (['{"custom_id": "a", "params": []}'], MOCK, 1, '"params" must be'),
        # a field the API would refuse
        (['{"custom_id": "a", "params": {}, "x": 1}'], MOCK, 1, "unexpected field 'x'"),
        # a generated id that collides with an explicit one
        (['{"custom_id": "line-2", "params": {}}', "hi"], MOCK, 2, "already used on line 1"),
    ],
)
def test_problems_name_their_line(
    lines: list[str], defaults: Defaults, line: int, problem: str
) -> None:
    with pytest.raises(BadInput, match=problem) as caught:
        _parse(*lines, defaults=defaults)
    assert caught.value.line == line
    assert f"line {line}:" in caught.value.message


def test_generated_ids_are_reported_with_their_lines() -> None:
    requests = parse_lines([b"a\n", b'{"custom_id": "x", "params": {}}\n', b"\n", b"b\n"], MOCK)
    assert requests.custom_ids == ["line-1", "x", "line-4"]
    assert requests.generated == [(1, "line-1"), (4, "line-4")]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"fine\n\xff\xfe\n")
    with pytest.raises(BadInput, match=r"line 2: not UTF-8"):
        read_requests(path, MOCK)


@pytest.mark.parametrize(
    ("max_requests", "max_bytes", "sizes"),
    [
        # by count
        (2, 10**6, [2, 2, 1]),
        # by size: each item is 5 bytes plus a comma
        (100, 12, [2, 2, 1]),
        # one item larger than the limit still goes, alone
        (100, 3, [1, 1, 1, 1, 1]),
    ],
)
def test_chunks_split_by_count_and_size(
    max_requests: int, max_bytes: int, sizes: list[int]
) -> None:
    requests = Requests(encoded=[b"12345"] * 5)
    assert [len(c) for c in chunks(requests, max_requests, max_bytes)] == sizes
