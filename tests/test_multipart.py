"""batchd.api.multipart: an upload's form reads the same whatever pieces it arrives in."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest

from batchd.api.multipart import Form, read_form
from batchd.errors import RequestTooLarge

BOUNDARY = b"b0undary"
FILE = b'{"custom_id":"a"}\r\n{"custom_id":"b"}\n--b0undar\n\r\nlast'  # near-delimiters inside


def form_body(file: bytes) -> bytes:
    return (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + file + b"\r\n--b0undary--\r\n"
    )


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read(data: bytes, size: int, max_file_bytes: int = 1 << 20) -> tuple[Form, bytes]:
    spool = io.BytesIO()
    form = await read_form(
        pieces(data, size), BOUNDARY, spool, max_file_bytes=max_file_bytes, idle_timeout=5
    )
    return form, spool.read()


@pytest.mark.parametrize("size", [1, 2, 3, 13, 64, 1 << 20])
async def test_a_form_reads_the_same_in_pieces_of_any_size(size: int) -> None:
    form, file = await read(form_body(FILE), size)

    assert file == FILE
    assert (form.fields, form.filename) == ({"purpose": "batch"}, "in.jsonl")
    assert (form.size, form.lines) == (len(FILE), 5)  # 4 newlines, a last line without


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
async def test_a_file_over_the_limit_is_refused_before_more_of_it_is_written(size: int) -> None:
    spool = io.BytesIO()
    with pytest.raises(RequestTooLarge):
        await read_form(
            pieces(form_body(FILE), size),
            BOUNDARY,
            spool,
            max_file_bytes=len(FILE) - 1,
            idle_timeout=5,
        )
    assert len(spool.getvalue()) < len(FILE)
