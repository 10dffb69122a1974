"""The OpenAPI document: it names exactly the API's routes, and a schemathesis run against
a live server (real uvicorn on loopback, real SQLite file) finds no 5xx, no answer that
breaks the document, and no error outside the envelope.

``BATCHD_FUZZ_EXAMPLES`` sets the examples per operation (default 25; ``make fuzz`` runs more).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2 as httpx
import msgspec
import pytest
import schemathesis
from anthropic.types.messages import MessageBatchIndividualResponse as SdkLine
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance

from batchd.schemas.results import MessageBatchIndividualResponse
from tests.conftest import mock_request, wait_ended
from tests.support.keys import make_keys
from tests.support.routes import served_routes
from tests.support.server import built_app, make_settings, serve_batchd

EXAMPLES = int(os.environ.get("BATCHD_FUZZ_EXAMPLES", "25"))

UNDOCUMENTED = {
    # Prometheus text for scrapers, not part of the API
    ("GET", "/metrics"),
    # the document itself
    ("GET", "/openapi.json"),
    # the web console: HTML, its static files, and its data routes
    ("GET", "/console"),
    ("GET", "/console/batches/{batch_id}"),
    ("GET", "/console/static/{path}"),
    ("GET", "/console/api/batches/{batch_id}/errors"),
    ("GET", "/console/usage"),
    ("GET", "/console/webhooks"),
    ("GET", "/console/api/usage"),
    ("GET", "/console/api/batches/{batch_id}/results"),
    ("GET", "/console/api/batches/{batch_id}/results/{custom_id}"),
    # OpenAI's synchronous calls: OpenAI's bodies, what a backend takes of them depends on
    # its kind (README, "OpenAI endpoints per backend kind")
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
}


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


@pytest.fixture(scope="module")
def app_document() -> tuple[Any, dict[str, Any]]:
    app = built_app()
    return app, app.openapi()


def test_the_document_names_every_api_route_and_nothing_else(
    app_document: tuple[Any, dict[str, Any]],
) -> None:
    app, document = app_document

    assert documented(document) == served_routes(app) - UNDOCUMENTED


def test_every_error_answer_is_the_envelope(app_document: tuple[Any, dict[str, Any]]) -> None:
    _, document = app_document
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}

    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            assert "422" not in responses  # FastAPI's; batchd answers 400
            assert "200" in responses
            for status, response in responses.items():
                if status != "200":
                    assert response["content"] == {"application/json": {"schema": envelope}}


# --- schemathesis against a live server ------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """A server with keys (so missing auth is refused) and one ended batch to aim at:
    (url, key, batch id)."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    key = make_keys(tmp / "batchd.db", {"fuzz": "default"})["fuzz"]
    settings_ = make_settings(str(tmp / "batchd.db"), max_requests_per_batch=50)
    with serve_batchd(settings_) as server:
        created = httpx.post(
            f"{server.url}/v1/messages/batches",
            headers={"x-api-key": key},
            json={"requests": [mock_request("a"), mock_request("b")]},
        )
        assert created.status_code == 200
        yield server.url, key, created.json()["id"]


# The document as the app generates it (no server needed to build it); the calls go to
# the live server. (schemathesis.pytest.from_fixture does not run under pytest 9.2.)
schema = schemathesis.openapi.from_dict(built_app().openapi())


@schemathesis.check
def error_envelope(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx and 5xx is the API's envelope with a matching request-id header."""
    if response.status_code < 400:
        return None
    body = response.json()
    request_id = response.headers["request-id"][0]
    assert body["type"] == "error", body
    assert isinstance(body["error"]["type"], str), body
    assert isinstance(body["error"]["message"], str), body
    assert body["error"]["message"], body
    assert body["request_id"] == request_id, body
    return True


_line = msgspec.json.Decoder(MessageBatchIndividualResponse)


@schemathesis.check
def jsonl_lines(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Results are a string to OpenAPI 3.1: each line must be the document's line type
    (``x-jsonl-line``) and parse with the SDK's own model."""
    if response.status_code != 200 or not case.path.endswith("/results"):
        return None
    lines = response.text.splitlines()
    assert lines, "an ended batch has at least one result line"
    for line in lines:
        _line.decode(line)
        SdkLine.model_validate_json(line)
    return True


def test_the_results_line_type_is_documented(app_document: tuple[Any, dict[str, Any]]) -> None:
    _, document = app_document
    results = document["paths"]["/v1/messages/batches/{batch_id}/results"]["get"]
    content = results["responses"]["200"]["content"]["application/x-jsonl"]

    line = content["schema"]["x-jsonl-line"]["$ref"].rsplit("/", 1)[1]
    assert line == MessageBatchIndividualResponse.__name__
    assert line in document["components"]["schemas"]


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("BATCHD_FUZZ_RANDOM") is None,
)
def test_the_live_api_keeps_to_its_document(case: Case[Any], live: tuple[str, str, str]) -> None:
    url, key, _ = live
    # Rules JSON Schema cannot say (api/openapi.py): a case that breaks one is valid to
    # the document but rightly refused, so "valid data is accepted" does not apply.
    excluded: list[CheckFunction] = (
        [positive_data_acceptance] if breaks_an_unwritten_rule(case) else []
    )

    case.call_and_validate(
        base_url=url,
        headers={"x-api-key": key},
        additional_checks=[error_envelope, jsonl_lines],
        excluded_checks=excluded,
    )


def breaks_an_unwritten_rule(case: Case[Any]) -> bool:
    query = case.query or {}
    if "after_id" in query and "before_id" in query:
        return True
    if case.path == "/v1/usage" and "since" in query:
        try:
            datetime.date.fromisoformat(str(query["since"]))
        except ValueError:
            return True  # YYYY-MM-DD, and a day of the calendar
    if case.path == "/v1/webhooks" and case.method.upper() == "POST":
        return True  # a receiver's URL must name a public host (and a real one)
    body = case.body if isinstance(case.body, dict) else {}
    if any(isinstance(body.get(name), float) for name in ("max_tokens", "top_k")):
        return True  # an integer written as 1e16 or 5.0
    requests = body.get("requests")
    if isinstance(requests, list):
        ids = [r.get("custom_id") for r in requests if isinstance(r, dict)]
        return len(ids) != len(set(map(str, ids)))
    return False


def test_an_ended_batchs_results_keep_to_the_document(live: tuple[str, str, str]) -> None:
    url, key, batch_id = live
    with anthropic.Anthropic(base_url=url, api_key=key, _strict_response_validation=True) as client:
        wait_ended(client, batch_id)
    operation = schema["/v1/messages/batches/{batch_id}/results"]["GET"]
    case = operation.Case(path_parameters={"batch_id": batch_id})

    response = case.call_and_validate(
        base_url=url, headers={"x-api-key": key}, additional_checks=[error_envelope, jsonl_lines]
    )
    assert response.status_code == 200
