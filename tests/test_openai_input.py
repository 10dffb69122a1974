"""batchd.openai_input: an input file's lines read the same whatever chunks it comes in."""

from __future__ import annotations

import json

import pytest

from batchd.openai_input import InputReader

CHAT = "/v1/chat/completions"


def line(custom_id: str, model: str = "m") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi\nthere"}]}
    item = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(item).encode()


def read(data: bytes, chunk: int) -> tuple[list[tuple[str, bytes]], list[tuple[int | None, str]]]:
    reader = InputReader(CHAT, lambda model: "mock" if model == "m" else None, 100)
    for at in range(0, len(data), chunk):
        reader.feed(data[at : at + chunk])
    errors = reader.finish()
    requests = [(r.custom_id, bytes(r.body)) for r in reader.requests]
    return requests, [(e.line, e.code) for e in errors]


BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi\nthere"}]})

FILES = [
    # newline-terminated lines
    (line("a") + b"\n" + line("b") + b"\n", ["a", "b"], []),
    # the last line without a newline
    (line("a") + b"\n" + line("b"), ["a", "b"], []),
    # CRLF line ends
    (line("a") + b"\r\n" + line("b") + b"\r\n", ["a", "b"], []),
    # blank and whitespace-only lines are skipped, but counted in the line numbers
    (b"\n" + line("a") + b"\n  \t\n\n" + line("b") + b"\n\n", ["a", "b"], []),
    # a bad line is named by its number, blank lines counted
    (line("a") + b"\n\n{not json\n", ["a"], [(3, "invalid_json_line")]),
    # a bad last line without a newline
    (line("a") + b"\n" + line("b", model="nothing"), ["a"], [(2, "model_not_found")]),
    # only blank lines
    (b"\n \n", [], [(None, "empty_file")]),
]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize(("data", "ids", "errors"), FILES)
def test_a_file_reads_the_same_in_chunks_of_any_size(
    data: bytes, ids: list[str], errors: list[tuple[int | None, str]], chunk: int
) -> None:
    requests, found = read(data, chunk)

    assert [custom_id for custom_id, _ in requests] == ids
    assert found == errors


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_each_body_is_kept_as_the_exact_bytes_of_its_line(chunk: int) -> None:
    data = line("a") + b"\n" + line("b") + b"\r\n"

    requests, _ = read(data, chunk)

    assert [body for _, body in requests] == [BODY.encode(), BODY.encode()]
