"""The wire types (``batchd.schemas``): spliced result lines have exactly their shape, the one
envelope builder writes the API's envelope, and what the types encode passes the SDK's own
models, validated as ``_strict_response_validation=True`` does (``model_validate``)."""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
import pytest
from anthropic.types import ErrorResponse as SdkErrorResponse
from anthropic.types import MessageTokensCount as SdkMessageTokensCount
from anthropic.types import ModelInfo as SdkModelInfo
from anthropic.types.messages import DeletedMessageBatch as SdkDeletedMessageBatch
from anthropic.types.messages import MessageBatch as SdkMessageBatch
from anthropic.types.messages import (
    MessageBatchIndividualResponse as SdkMessageBatchIndividualResponse,
)

from batchd.backends.mock import mock_message
from batchd.domain import Batch, ProcessingStatus, RequestCounts
from batchd.errors import API_STATUS, ErrorType
from batchd.schemas.batches import DeletedMessageBatch, batch_to_wire, page_to_wire
from batchd.schemas.errors import ErrorResponse, error_envelope
from batchd.schemas.messages import MessageTokensCount
from batchd.schemas.models import ModelInfo
from batchd.schemas.results import (
    MessageBatchIndividualResponse,
    canceled_line,
    errored_line,
    expired_line,
    succeeded_line,
)
from batchd.validation import check_params

_PARAMS = b'{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi there"}]}'
_TOOL_PARAMS = (
    b'{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}],'
    b'"tools":[{"name":"f","input_schema":{}}],"tool_choice":{"type":"any"}}'
)
_line_decoder = msgspec.json.Decoder(MessageBatchIndividualResponse)


def _message(raw: bytes) -> dict[str, Any]:
    return mock_message(check_params(raw), raw)


@pytest.mark.parametrize(
    "line",
    [
        succeeded_line("a-1", _message(_PARAMS)),  # a text answer
        succeeded_line("a_2", _message(_TOOL_PARAMS)),  # a tool call
        errored_line("b", "invalid_request_error", 'max_tokens: "quoted" \\ and \n'),
        errored_line("c", "api_error", "request left in state running"),
        errored_line("c2", "request_too_large", "an upstream's 413"),  # not in the SDK's union
        canceled_line("d"),
        expired_line("e"),
    ],
)
def test_each_spliced_line_is_exactly_its_type(line: bytes) -> None:
    typed = _line_decoder.decode(line)  # forbids unknown fields all the way down

    assert json.loads(msgspec.json.encode(typed)) == json.loads(line)
    SdkMessageBatchIndividualResponse.model_validate(json.loads(line))


def test_the_envelope_is_the_apis() -> None:
    encoded = msgspec.json.encode(error_envelope("not_found_error", "no such batch", "req_1"))

    assert json.loads(encoded) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such batch"},
        "request_id": "req_1",
    }
    assert encoded.startswith(b'{"type":"error",')
    SdkErrorResponse.model_validate_json(encoded)


def test_an_errored_line_holds_the_same_envelope_without_request_id() -> None:
    line = json.loads(errored_line("a", "api_error", "boom"))

    expected = msgspec.json.encode(error_envelope("api_error", "boom", None))
    assert line["result"]["error"] == json.loads(expected)


def test_an_upstreams_413_is_an_invalid_request_inside_a_result_line() -> None:
    line = json.loads(errored_line("a", "request_too_large", "too big"))

    assert line["result"]["error"]["error"] == {
        "type": "invalid_request_error",
        "message": "too big",
    }


def test_the_error_types_are_the_sdks() -> None:
    # request_too_large is the HTTP 413 answer's type in the API's docs, not in the SDK's
    # ErrorResponse: the SDK reads an error answer's body without validating it.
    for error_type in set(get_args(ErrorType)) - {"request_too_large"}:
        envelope = msgspec.json.encode(error_envelope(error_type, "m", None))
        # the SDK's error is a union discriminated on type: an unknown one does not validate
        assert SdkErrorResponse.model_validate_json(envelope).error.type == error_type


def test_the_documented_error_types_are_the_apis() -> None:
    _, components = msgspec.json.schema_components([ErrorResponse])

    assert set(components["ErrorObject"]["properties"]["type"]["enum"]) == set(API_STATUS)


_BATCH = Batch(
    id="msgbatch_01",
    workspace="default",
    seq=1,
    processing_status=ProcessingStatus.ENDED,
    counts=RequestCounts(processing=0, succeeded=2, errored=1, canceled=0, expired=0),
    created_at=1_700_000_000.0,
    expires_at=1_700_086_400.0,
    ended_at=1_700_000_100.5,
    cancel_initiated_at=None,
)


def test_a_batch_and_its_page_parse_with_the_sdk() -> None:
    wire = batch_to_wire(_BATCH, origin="http://h:1", retention=86_400.0, now=1_700_000_200.0)
    page = json.loads(msgspec.json.encode(page_to_wire([wire], has_more=False)))

    parsed = SdkMessageBatch.model_validate(page["data"][0])
    assert parsed.results_url == "http://h:1/v1/messages/batches/msgbatch_01/results"
    assert parsed.request_counts.errored == 1
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("msgbatch_01",) * 2 + (False,)


@pytest.mark.parametrize(
    ("value", "sdk_model"),
    [
        (DeletedMessageBatch("msgbatch_01"), SdkDeletedMessageBatch),
        (ModelInfo("m", "m", "2026-01-01T00:00:00Z", "active"), SdkModelInfo),
        (MessageTokensCount(12), SdkMessageTokensCount),
    ],
)
def test_small_answers_parse_with_the_sdk(value: msgspec.Struct, sdk_model: Any) -> None:
    sdk_model.model_validate_json(msgspec.json.encode(value))
