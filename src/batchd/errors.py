"""The one error tree of batchd.

Every error a client can see knows its API error type and HTTP status; only
``batchd.api.errors`` turns them into the wire envelope.

    BatchdError                      api_error, 500
    ├── InvalidRequest               invalid_request_error, 400
    ├── AuthenticationFailed         authentication_error, 401
    ├── PermissionDenied             permission_error, 403
    ├── NotFound                     not_found_error, 404
    ├── RequestTimedOut              timeout_error, 408 (the client stopped sending)
    ├── RequestTooLarge              request_too_large, 413
    ├── RateLimited                  rate_limit_error, 429
    ├── StoreUnavailable             api_error, 503
    └── UpstreamError                the API's type for the upstream's answer, and its status

``UpstreamError`` carries what a backend saw: the upstream's status, the API's error type
for it (``error_type_for``, the one table), whether a retry may help (``retryable_status``,
the one rule) and how long the upstream asked us to wait. Only the API's own error types
(``API_STATUS``) ever reach a client.
"""

from __future__ import annotations

from typing import Literal

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]


class BatchdError(Exception):
    """Base of every error batchd reports to a client.

    ``retryable`` is what the client is told (``x-should-retry``): whether the same call
    may succeed later.
    """

    error_type: ErrorType = "api_error"
    status = 500
    retryable = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What the OpenAI face's envelope adds: the parameter at fault and a machine code.
        self.param = param
        self.code = code


class InvalidRequest(BatchdError):
    error_type = "invalid_request_error"
    status = 400


class AuthenticationFailed(BatchdError):
    error_type = "authentication_error"
    status = 401


class PermissionDenied(BatchdError):
    error_type = "permission_error"
    status = 403


class NotFound(BatchdError):
    error_type = "not_found_error"
    status = 404


class RequestTimedOut(BatchdError):
    error_type = "timeout_error"
    status = 408


class RequestTooLarge(BatchdError):
    error_type = "request_too_large"
    status = 413


class RateLimited(BatchdError):
    error_type = "rate_limit_error"
    status = 429
    retryable = True


class StoreUnavailable(BatchdError):
    """The database cannot be reached or written right now; the client may retry."""

    error_type = "api_error"
    status = 503
    retryable = True


# The API's own error types, each with the HTTP status the API answers it with (the errors
# page, docs.claude.com/en/api/errors; 504 from the SDK's GatewayTimeoutError). Nothing else
# may reach a client as an error type.
API_STATUS: dict[ErrorType, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

# The one table from an HTTP status to the API's error type: the API's own pairs, and the
# two statuses it has no row for whose meaning is plain (a proxy's request timeout, and a
# server with no capacity, as vLLM, SGLang and LiteLLM answer when saturated).
ERROR_TYPE_BY_STATUS: dict[int, ErrorType] = {
    **{status: error_type for error_type, status in API_STATUS.items()},
    408: "timeout_error",
    503: "overloaded_error",
}


def error_type_for(status: int, named: object = None) -> ErrorType:
    """The API's error type for an answer with HTTP ``status`` whose body ``named`` a type.

    A status in the table decides, whatever the body names, so that a 429 is always a
    ``rate_limit_error`` to pacing, retries and clients alike. For any other status the
    body's type counts if it is one of the API's own (a 502 that says ``overloaded_error``);
    otherwise any other 4xx is ``invalid_request_error`` (as the API itself does) and
    anything else ``api_error``.
    """
    if (by_status := ERROR_TYPE_BY_STATUS.get(status)) is not None:
        return by_status
    if isinstance(named, str) and named in API_STATUS:
        return named
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def retryable_status(status: int) -> bool:
    """The one retry rule: may asking the upstream again help after it answered ``status``?

    Yes for what is the upstream's passing state: 408 and 504 (timeouts), 429 (rate limit),
    529 and 503 (overloaded), 500 and every other 5xx (server errors; the API's errors page
    calls ``api_error`` an unexpected internal error). No for every other answer: a 4xx is
    about the request or the account and comes back the same, including 401 and 403 (the
    upstream refused batchd's own key), 402, 413 and 409 (the SDK retries 409 as a "lock
    timeout", but the Messages API has no conflicts to wait out; a 409 from a proxy is a
    refusal). An upstream that says so explicitly (``x-should-retry``) is believed over this
    rule. The engine retries by it and interactive clients are told it (``x-should-retry``).
    """
    return status in (408, 429) or status >= 500


class UpstreamError(BatchdError):
    """A backend failed to produce a message.

    ``upstream_status`` is what the upstream answered, or the gateway status batchd stands
    in with when no usable answer came (502 for a failed connection or a broken answer, 504
    for none in time). ``error_type`` is the API's type for it (``error_type_for`` unless
    given) and ``status`` the API's status for that type, which is what a waiting client
    gets: an upstream 422 reaches it as a 400 ``invalid_request_error``. ``retryable`` is
    the verdict of ``retryable_status`` unless given; ``retry_after`` is the delay the
    upstream asked for, in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        error_type: ErrorType | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.error_type = error_type or error_type_for(upstream_status)
        self.status = API_STATUS[self.error_type]
        self.retryable = retryable_status(upstream_status) if retryable is None else retryable
        self.retry_after = retry_after

    @classmethod
    def answered(
        cls,
        status: int,
        message: str | None,
        *,
        named_type: object = None,
        should_retry: bool | None = None,
        retry_after: float | None = None,
    ) -> UpstreamError:
        """The error for an upstream's non-2xx answer, on every backend kind.

        The type comes from ``error_type_for``. A 401 or 403 is the upstream refusing
        batchd's own key (clients never send theirs upstream), so it is batchd's fault, not
        the client's: ``api_error``, in batch results and interactive answers alike.
        ``should_retry`` is the upstream's explicit verdict, if it gave one.
        """
        message = message or f"upstream answered HTTP {status}"
        error_type: ErrorType | None = None
        if status in (401, 403):
            error_type = "api_error"
            message = (
                f"the upstream refused batchd's upstream credentials (HTTP {status}: "
                f"{message}); the server's configuration must be fixed, not your API key"
            )
        else:
            error_type = error_type_for(status, named_type)
        return cls(
            message,
            upstream_status=status,
            error_type=error_type,
            retryable=should_retry,
            retry_after=retry_after,
        )
