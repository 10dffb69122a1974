"""Pure checks of create-batch envelopes and Messages params, table by table."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchd.errors import InvalidRequest
from batchd.validation import check_params, parse_create_body

DEEP = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # 100,000 levels of objects


def _body(requests: Any) -> bytes:
    return json.dumps({"requests": requests}).encode()


def _req(custom_id: Any = "a", **params: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "params": {"model": "m", "max_tokens": 1, **params}}


def test_params_are_kept_byte_for_byte() -> None:
    raw = b'{"model":"m", "max_tokens":1,"messages":[],"temperature":0.5 ,"x":{"y":[1]}}'
    body = b'{"requests":[{"custom_id":"a","params":' + raw + b"}]}"
    [item] = parse_create_body(body, max_requests=10)
    assert (item.custom_id, bytes(item.params)) == ("a", raw)  # a view into the body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is empty"),  # nothing at all
        (b"{", "not valid JSON"),  # truncated JSON
        (b"[]", "Expected `object`"),  # not an object
        (b"{}", "requests: Field required"),  # no requests key
        (_body([]), "requests: List should have at least 1 item"),  # empty list
        (_body("x"), "requests: Expected `array`"),  # requests not a list
        (_body([_req(), _req()]), "requests.1.custom_id: duplicate"),  # duplicate ids
        (_body([_req("")]), "at least 1 character"),  # empty id
        (_body([_req("x" * 65)]), "at most 64 characters"),  # id too long
        (_body([_req("a b")]), "should match pattern"),  # space in id
        (_body([_req("a.b")]), "should match pattern"),  # dot in id
        (_body([_req("a\n")]), "should match pattern"),  # a newline after the id
        (_body([_req(7)]), "requests.0.custom_id: Input should be a valid string"),
        (_body([{"custom_id": "a"}]), "requests.0.params: Field required"),
        (_body([{"params": {}}]), "requests.0.custom_id: Field required"),
        (_body([{"custom_id": "a", "params": []}]), "requests.0.params: Input should be"),
        (_body([{**_req(), "extra": 1}]), "requests.0.extra: Extra inputs are not permitted"),
        (b'{"requests":[],"x":1}', "x: Extra inputs are not permitted"),
        # params nested deeper than the decoder's recursion limit (was an unhandled 500)
        (b'{"requests":[{"custom_id":"a","params":' + DEEP + b"}]}", "nested too deeply"),
        # the envelope itself nested that deep
        (b'{"requests":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "requests.0: Expected"),
    ],
)
def test_bad_envelopes_are_rejected(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message.replace(".", r"\.").replace("`", ".")):
        parse_create_body(body, max_requests=10)


def test_request_count_limit() -> None:
    body = _body([_req(f"r{i}") for i in range(4)])
    with pytest.raises(InvalidRequest, match="at most 3 items"):
        parse_create_body(body, max_requests=3)
    assert len(parse_create_body(body, max_requests=4)) == 4


def _params(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_params(max_tokens=None), "max_tokens: Field required"),
        (_params(max_tokens="5"), "max_tokens: Expected `int`"),  # no string coercion
        (_params(max_tokens=-1), "max_tokens: Expected `int` >= 0"),
        (_params(model=None), "model: Field required"),
        (_params(messages=None), "messages: Field required"),
        (_params(messages=[]), "messages: List should have at least 1 item"),
        (_params(messages="hi"), "messages: Expected `array`"),
        (_params(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
        (_params(messages=[{"role": "user", "content": [{"text": "x"}]}]), "content.0.type"),
        (_params(stream=True), "stream: streaming is not supported"),
        (_params(temperature=3), "temperature: Expected `float` <= 1"),
        (_params(stop_sequences="x"), "stop_sequences: Expected `array"),
        (_params(tools=[{"description": "no name"}]), "tools.0.name: Field required"),
        (_params(system=[{"type": "text"}]), "system.0.text: Field required"),
        (_params(metadata={})[:-3] + DEEP + b"}", "params is nested too deeply"),
    ],
)
def test_bad_params_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_params(raw)
    assert message in info.value.message


def test_unknown_params_keys_and_old_sampling_fields_pass() -> None:
    params = check_params(_params(temperature=0.2, top_p=0.9, top_k=5, thinking={"type": "x"}))
    assert (params.temperature, params.top_k) == (0.2, 5)


def test_stream_is_allowed_outside_batches() -> None:
    assert check_params(_params(stream=True), in_batch=False).stream is True
