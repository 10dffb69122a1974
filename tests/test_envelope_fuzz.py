"""Random create-batch bodies over real HTTP: the server's answer is the one a reference
predicate, written here from the spec, expects, and nothing is stored unless it is 200.

The predicate (``expected_status``) is independent of ``batchd.validation``: a strict
JSON parse, then the spec's envelope rules (``../shared/spec/message-batches.md`` §2.1, §7,
§11.9). Bodies come from hypothesis: valid, near-valid and broken envelopes, custom_ids
from the pattern's edges (unicode, 64/65 chars, duplicates), params of any JSON, sizes
around the body limit, deep nesting, raw byte damage.

``BATCHD_FUZZ_EXAMPLES`` sets the number of bodies (default 150; ``make fuzz`` runs more).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.server import RunningServer, make_settings, serve_batchd

EXAMPLES = int(os.environ.get("BATCHD_FUZZ_EXAMPLES", "150"))
MAX_BODY_BYTES = 4096
MAX_REQUESTS = 6
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


# --- the reference: the spec's rules, from scratch ---------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def _surrogates(value: Any, low: int = 0xD800, high: int = 0xDFFF) -> bool:
    """Whether any string in ``value`` (keys too) has a code point in [low, high]."""
    if isinstance(value, str):
        return any(low <= ord(c) <= high for c in value)
    if isinstance(value, dict):
        return any(_surrogates(k, low, high) or _surrogates(v, low, high) for k, v in value.items())
    if isinstance(value, list):
        return any(_surrogates(v, low, high) for v in value)
    return False


def _lone_escapes(value: Any) -> bool:
    """Unpaired surrogates that can only come from ``\\uXXXX`` escapes, not from raw bytes
    (which decode, with surrogateescape, to U+DC80..U+DCFF)."""
    return _surrogates(value, 0xD800, 0xDC7F) or _surrogates(value, 0xDD00, 0xDFFF)


def _parse(body: bytes) -> Any:
    """RFC 8259 JSON, or ValueError: no NaN/Infinity, no duplicate keys, no control
    characters in strings, no unpaired surrogate escapes. Bytes that are not UTF-8 come
    back as U+DC80..U+DCFF, for the caller to judge by where they are."""
    value = json.loads(
        body.decode("utf-8", "surrogateescape"),
        parse_constant=_reject_constant,
        object_pairs_hook=_no_duplicates,
    )
    if _lone_escapes(value):
        raise ValueError("not Unicode text")
    return value


def expected_status(body: bytes) -> int:
    """What the spec says a create-batch body gets: 200, 400 or 413."""
    if len(body) > MAX_BODY_BYTES:
        return 413
    try:
        envelope = _parse(body)
    except (ValueError, RecursionError):
        return 400
    if not isinstance(envelope, dict) or set(envelope) != {"requests"}:
        return 400
    # Bytes that are not UTF-8: refused in the envelope; inside params they make only that
    # request errored (the spec's per-request rule; test_bad_input has the case).
    outside = (
        [envelope]
        if not isinstance(envelope["requests"], list)
        else [
            {k: v for k, v in item.items() if k != "params"} if isinstance(item, dict) else item
            for item in envelope["requests"]
        ]
    )
    if _surrogates(outside):
        return 400
    requests = envelope["requests"]
    if not isinstance(requests, list) or not 1 <= len(requests) <= MAX_REQUESTS:
        return 400
    seen: set[str] = set()
    for item in requests:
        if not isinstance(item, dict) or set(item) != {"custom_id", "params"}:
            return 400
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            return 400
        if custom_id in seen:
            return 400
        seen.add(custom_id)
        if not isinstance(item["params"], dict):  # any object: bad params are per-request
            return 400
    return 200


# --- bodies ---------------------------------------------------------------------------------

VALID_ID = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
EDGE_IDS = ["a" * 64, "a" * 65, "", "a b", "a.b", "a\n", "\u00e9", "\uff21", "\u0663", "a\x00"]
ID_CHARS = "abcXYZ019_-"
custom_ids = st.one_of(
    st.sampled_from(EDGE_IDS),
    st.text(alphabet=ID_CHARS, min_size=62, max_size=66),  # around the length limit
    st.text(alphabet=ID_CHARS + ".:/ \t+", min_size=1, max_size=8),  # near the alphabet
    VALID_ID,
    st.text(max_size=70),  # any unicode, unpaired surrogates included
    st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.just("a"), max_size=2)),
)
# Within params, unicode without unpaired surrogates: an escaped one (\\udc80) and a raw
# byte that is not UTF-8 (0x80) would look alike to the reference. Raw bytes come from
# the "byte" damage below.
TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities included: not JSON
    TEXT,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner),
    max_leaves=12,
)
GOOD_PARAMS = {"model": "mock", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
valid_params = st.one_of(
    st.just(GOOD_PARAMS),
    st.builds(lambda pad: {**GOOD_PARAMS, "pad": "x" * pad}, st.integers(0, MAX_BODY_BYTES)),
    st.dictionaries(TEXT, json_values, max_size=4),  # any object: per-request checks only
)
MUTATIONS = ["none"] * 4 + [
    *["custom_id"] * 3,  # one custom_id: an edge case, near the limits, any text, no string
    "params",  # one params becomes any JSON value
    "duplicate",  # one custom_id repeats another
    "count",  # one request more than the limit
    "drop_key",  # an item loses custom_id or params
    "extra_key",  # an item gains a key
    "item",  # an item is not an object
    "top_extra",  # the body gains a key beside requests
    "requests",  # requests is any JSON value (an empty list included)
    "body",  # the body is any JSON value
]


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    """A valid envelope with at most one fault in it."""
    n = draw(st.integers(1, MAX_REQUESTS))
    ids = draw(st.lists(VALID_ID, min_size=n, max_size=n, unique=True))
    requests: list[Any] = [{"custom_id": i, "params": draw(valid_params)} for i in ids]
    k = draw(st.integers(0, n - 1))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "custom_id":
        requests[k]["custom_id"] = draw(custom_ids)
    elif mutation == "params":
        requests[k]["params"] = draw(json_values)
    elif mutation == "duplicate":
        requests.append({"custom_id": ids[k], "params": GOOD_PARAMS})
    elif mutation == "count":
        requests = [{"custom_id": f"n{i}", "params": GOOD_PARAMS} for i in range(MAX_REQUESTS + 1)]
    elif mutation == "drop_key":
        del requests[k][draw(st.sampled_from(["custom_id", "params"]))]
    elif mutation == "extra_key":
        requests[k][draw(st.text(min_size=1, max_size=5))] = draw(json_scalars)
    elif mutation == "item":
        requests[k] = draw(json_scalars)
    envelope: Any = {"requests": requests}
    if mutation == "top_extra":
        envelope[draw(st.text(max_size=5))] = 1
    elif mutation == "requests":
        envelope["requests"] = draw(json_values)
    elif mutation == "body":
        envelope = draw(json_values)
    return envelope


def _nested(depth: int) -> bytes:
    params = b'{"model":"mock","max_tokens":1,"messages":[],"x":' + b"[" * depth
    return b'{"requests":[{"custom_id":"a","params":' + params + b"]" * depth + b"}]}"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    envelope = draw(envelopes())
    ascii_only = draw(st.booleans())
    try:
        body = json.dumps(envelope, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except ValueError:  # a circular structure cannot happen; keep mypy and hypothesis calm
        body = b"{}"
    damage = draw(st.sampled_from(["none"] * 12 + ["truncate", "byte", "nested", "bom"]))
    if damage == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == "byte" and body:
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    elif damage == "nested":
        body = _nested(draw(st.sampled_from([10, 100, 500, 2000])))
    elif damage == "bom":
        body = b"\xef\xbb\xbf" + body
    return body


# --- the test -------------------------------------------------------------------------------


Test = TypeVar("Test", bound=Callable[..., Any])


def example_each(bodies: list[bytes]) -> Callable[[Test], Test]:
    def decorate(test: Test) -> Test:
        for body in reversed(bodies):
            test = example(body=body)(test)
        return test

    return decorate


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    db = tmp_path_factory.mktemp("envelopes") / "batchd.db"
    settings_ = make_settings(
        str(db), engine=False, max_body_bytes=MAX_BODY_BYTES, max_requests_per_batch=MAX_REQUESTS
    )
    with serve_batchd(settings_) as server:
        yield server, db


def stored(db: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(db)) as conn:
        batches = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        requests = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    return int(batches), int(requests)


def _body(*custom_ids: Any, params: Any = GOOD_PARAMS, **extra: Any) -> bytes:
    requests = [{"custom_id": c, "params": params} for c in custom_ids]
    return json.dumps({"requests": requests, **extra}).encode()


# Each rule at its boundary, always tried before the random bodies.
BOUNDARIES = [
    _body("a" * 64),  # the longest id
    _body("a" * 65),  # one character too many
    _body(*[f"r{i}" for i in range(MAX_REQUESTS)]),  # as many requests as allowed
    _body(*[f"r{i}" for i in range(MAX_REQUESTS + 1)]),  # one too many
    _body("a.b"),  # a character outside the pattern
    _body("a", "a"),  # a duplicate
    _body("a", params=[]),  # params an array
    _body("a", extra=1),  # a key beside requests
    _body("a", params={**GOOD_PARAMS, "pad": "x" * (MAX_BODY_BYTES - 140)}),  # near the limit
    _body("a", params={**GOOD_PARAMS, "pad": "x" * MAX_BODY_BYTES}),  # over it
]


@given(body=bodies())
@example_each(BOUNDARIES)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("BATCHD_FUZZ_RANDOM") is None,
)
def test_the_server_decides_as_the_spec_says(live: tuple[RunningServer, Path], body: bytes) -> None:
    server, db = live
    before = stored(db)
    headers = {"content-type": "application/json", "x-api-key": "sk"}

    reply = httpx.post(f"{server.url}/v1/messages/batches", content=body, headers=headers)

    expected = expected_status(body)
    assert reply.status_code == expected, (reply.text, body[:300])
    batches, requests = stored(db)
    if expected == 200:
        accepted = _parse(body)["requests"]
        assert sum(reply.json()["request_counts"].values()) == len(accepted)
        assert (batches, requests) == (before[0] + 1, before[1] + len(accepted))
    else:
        assert reply.json()["type"] == "error"
        assert (batches, requests) == before  # nothing half-written
