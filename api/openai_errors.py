"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for the
OpenAI-compatible routes only.

A router built with ``route_class=OpenAIRoute`` renders its own errors this way (the same
``code``, status and ``X-Request-ID`` as the native envelope); every other route keeps the native
envelope of :mod:`api.errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import http_error_body, http_status, request_id_of, validation_body
from core.errors import AppError

logger = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


class OpenAIErrorBody(BaseModel):
    """OpenAI's error object; ``code`` is glmft's stable code."""

    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = None
    code: str | None = Field(default=None, examples=["invalid_dataset"])


class OpenAIError(BaseModel):
    """The body of every 4xx/5xx answer of the OpenAI-compatible routes."""

    error: OpenAIErrorBody


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


def openai_error(
    request: Request,
    status: int,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Render ``body`` (``{code, message, param?}``) in OpenAI's shape."""
    request_id = request_id_of(request)
    error = OpenAIErrorBody(
        message=str(body.get("message", "")),
        type=error_type(status),
        param=body.get("param"),
        code=body.get("code"),
    )
    return JSONResponse(
        OpenAIError(error=error).model_dump(),
        status_code=status,
        headers={"X-Request-ID": request_id, **(headers or {})},
    )


def _render(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, AppError):
        return openai_error(request, exc.http_status, exc.to_dict(), getattr(exc, "headers", None))
    if isinstance(exc, RequestValidationError):
        return openai_error(request, 422, validation_body(exc))
    if isinstance(exc, StarletteHTTPException):
        return openai_error(request, http_status(exc), http_error_body(request, exc), exc.headers)
    if isinstance(exc, OperationalError):
        body = {"code": "unavailable", "message": "the database is unavailable; retry later"}
        return openai_error(request, 503, body)
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    message = f"internal error (request {request_id_of(request)})"
    return openai_error(request, 500, {"code": "internal_error", "message": message})


class OpenAIRoute(APIRoute):
    """A route whose errors (auth, validation, the core vocabulary) use OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error of these routes leaves in OpenAI's shape
                return _render(request, exc)

        return with_openai_errors


OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": description}
    for status, description in {
        401: "Missing or unknown API key.",
        404: "Not found (or owned by another tenant).",
        409: "Conflicts with the resource's current state.",
        422: "The request is invalid; `param` names the field.",
    }.items()
}
#: Beside those, on the routes that add to a tenant's queue or storage.
OPENAI_QUOTA_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {"model": OpenAIError, "description": "A quota of the tenant would be passed."}
}
