"""The one status-to-type table and the one retry rule (batchd.errors): pure, table-driven."""

from __future__ import annotations

import pytest

from batchd.errors import API_STATUS, UpstreamError, error_type_for, retryable_status


@pytest.mark.parametrize(
    ("status", "named", "expected"),
    [
        (400, None, "invalid_request_error"),  # the API's own rows
        (402, None, "billing_error"),
        (413, None, "request_too_large"),
        (504, None, "timeout_error"),
        (529, None, "overloaded_error"),
        (408, None, "timeout_error"),  # a proxy's request timeout
        (503, None, "overloaded_error"),  # a saturated vLLM, SGLang or LiteLLM
        (422, None, "invalid_request_error"),  # any other 4xx, as the API does
        (409, None, "invalid_request_error"),
        (502, None, "api_error"),  # any other 5xx
        (302, None, "api_error"),  # a redirect is the server's configuration
        (400, "no_db_connection", "invalid_request_error"),  # a proxy's own type never counts
        (401, "auth_error", "authentication_error"),
        (429, "invalid_request_error", "rate_limit_error"),  # a table status decides
        (500, "overloaded_error", "api_error"),
        (502, "overloaded_error", "overloaded_error"),  # elsewhere the API's own type counts
        (422, "not_found_error", "not_found_error"),
        (502, "budget_exceeded", "api_error"),
    ],
)
def test_error_type_for(status: int, named: str | None, expected: str) -> None:
    assert error_type_for(status, named) == expected


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),  # timeouts
        (504, True),
        (429, True),  # rate limited
        (529, True),  # overloaded
        (503, True),
        (500, True),  # server errors
        (502, True),
        (400, False),  # the request or the account: the same again
        (401, False),
        (403, False),
        (402, False),
        (404, False),
        (409, False),  # no lock to wait out on the Messages API
        (413, False),
        (422, False),
    ],
)
def test_retryable_status(status: int, retryable: bool) -> None:
    assert retryable_status(status) is retryable


@pytest.mark.parametrize(
    ("upstream_status", "client_status"),
    [
        (422, 400),  # invalid_request_error is a 400 on the API
        (409, 400),
        (503, 529),  # overloaded_error
        (408, 504),  # timeout_error
        (502, 500),  # api_error
        (401, 500),  # batchd's key refused: api_error
        (403, 500),
        (429, 429),
    ],
)
def test_a_client_gets_the_apis_status_for_the_type(
    upstream_status: int, client_status: int
) -> None:
    error = UpstreamError.answered(upstream_status, "x")
    assert error.status == client_status == API_STATUS[error.error_type]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_upstream_key_is_the_servers_fault(status: int) -> None:
    error = UpstreamError.answered(status, "invalid x-api-key", named_type="authentication_error")
    assert (error.error_type, error.retryable) == ("api_error", False)
    assert "refused batchd's upstream credentials" in error.message
    assert "invalid x-api-key" in error.message


def test_the_upstreams_own_verdict_wins() -> None:
    assert UpstreamError.answered(500, "x", should_retry=False).retryable is False
    assert UpstreamError.answered(400, "x", should_retry=True).retryable is True
