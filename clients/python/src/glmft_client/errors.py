"""The exceptions of the SDK: one class per kind of failure, each carrying what the server said.

``APIStatusError`` and its subclasses hold ``status_code``, ``code`` (glmft's stable error code,
e.g. ``invalid_dataset``), ``message``, ``param``, ``details``, ``request_id`` (the server's
``X-Request-ID``) and the decoded ``body``. ``APIConnectionError`` means no response arrived.
"""

from __future__ import annotations

from typing import Any

import httpx

from glmft_client.types import Evaluation, Job


class GlmftError(Exception):
    """Base of every error this package raises."""


class APIError(GlmftError):
    """A request that did not succeed.

    Args:
        message: what went wrong, for humans.
        status_code: the HTTP status; ``None`` when no response arrived.
        code: glmft's stable error code (``None`` when no response arrived).
        param: the request field at fault, when the server named one.
        request_id: the server's ``X-Request-ID``.
        details: extra structured context from the server.
        body: the decoded response body.
        response: the HTTP response (its headers, e.g. ``Retry-After``), if one arrived.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.request_id = request_id
        self.details = details or {}
        self.body = body
        self.response = response

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        request = f" [request {self.request_id}]" if self.request_id else ""
        prefix = f"{self.status_code} {self.code}: " if self.status_code else ""
        return f"{prefix}{self.message}{where}{request}"


class APIConnectionError(APIError):
    """No response: the server could not be reached or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request timed out before a response arrived."""


class APIStreamError(APIError):
    """An ``error`` event inside a stream that had already started."""


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401: no or an unknown API key."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404: the resource does not exist or belongs to another tenant."""


class ConflictError(APIStatusError):
    """409: conflicts with the resource's state (e.g. cancelling a finished job)."""


class PayloadTooLargeError(APIStatusError):
    """413: the upload is larger than the server's limit."""


class InvalidRequestError(APIStatusError):
    """422: the request, its config or its dataset is invalid; ``param`` names the field."""


class RateLimitError(APIStatusError):
    """429: too many requests (retried automatically, honouring ``Retry-After``)."""


class ServerError(APIStatusError):
    """5xx (retried automatically)."""


class ServiceUnavailableError(ServerError):
    """503: a backing service (database, queue) is unavailable."""


class WaitTimeoutError(GlmftError):
    """A job (or an evaluation) did not finish within the time given to ``wait``.

    Attributes:
        job_id: the id waited for: a job's, or an evaluation's when ``kind`` is ``evaluation``.
        timeout: the seconds waited.
        job: the job or evaluation as last seen, if any.
        kind: ``job`` or ``evaluation``.
    """

    def __init__(
        self,
        job_id: str,
        timeout: float,
        job: Job | Evaluation | None = None,
        *,
        kind: str = "job",
    ) -> None:
        state = f" (state {job.state})" if job is not None else ""
        super().__init__(f"{kind} {job_id} did not finish within {timeout:g} s{state}")
        self.job_id = job_id
        self.timeout = timeout
        self.job = job
        self.kind = kind


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIStatusError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else APIStatusError


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for a 4xx/5xx response (glmft's or OpenAI's error shape, or plain text)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or response.reason_phrase)
        code, param, details = error.get("code"), error.get("param"), error.get("details")
    else:
        message = response.text.strip() or response.reason_phrase
        code, param, details = None, None, None
    request_id = response.headers.get("x-request-id")
    if request_id is None and isinstance(body, dict):
        request_id = body.get("request_id")
    return error_class(response.status_code)(
        message,
        status_code=response.status_code,
        code=code,
        param=param,
        request_id=request_id,
        details=details if isinstance(details, dict) else None,
        body=body,
        response=response,
    )
