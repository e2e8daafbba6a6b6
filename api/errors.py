"""One error envelope for every 4xx/5xx: ``{"error": {code, message, param?, details?},
"request_id"}``.

Handlers map the core vocabulary (:class:`core.errors.AppError`), request validation and
Starlette's HTTP errors onto it; unexpected exceptions become ``internal_error`` in
:mod:`api.middleware` (logged there, never a stack trace in the body).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import AppError

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
_LOCATION_PREFIXES = {"body", "query", "path", "header", "cookie"}


def request_id_of(request: Request) -> str:
    """The id :mod:`api.middleware` gave this request (a fresh one outside it)."""
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def envelope(
    status: int,
    body: Mapping[str, Any],
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error response: ``body`` is ``{code, message, param?, details?}``."""
    all_headers = {"X-Request-ID": request_id, **(headers or {})}
    content = {"error": dict(body), "request_id": request_id}
    return JSONResponse(content, status_code=status, headers=all_headers)


def internal_error_response(request_id: str) -> JSONResponse:
    """500 ``internal_error``: the details stay in the server log."""
    body = {"code": "internal_error", "message": f"internal error (request {request_id})"}
    return envelope(500, body, request_id)


def _param(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATION_PREFIXES:
        parts = parts[1:]
    return ".".join(parts) or None


def validation_body(exc: RequestValidationError) -> dict[str, Any]:
    """``{code: invalid_request, message, param, details.errors}`` of a request validation error."""
    errors = [
        {"param": _param(e.get("loc", ())), "message": str(e.get("msg", "")), "type": e.get("type")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"param": None, "message": "invalid request"}
    where = f"{first['param']}: " if first["param"] else ""
    body: dict[str, Any] = {"code": "invalid_request", "message": f"{where}{first['message']}"}
    if first["param"]:
        body["param"] = first["param"]
    body["details"] = {"errors": errors}
    return body


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    error = cast(AppError, exc)
    headers = getattr(error, "headers", None)
    return envelope(error.http_status, error.to_dict(), request_id_of(request), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    body = validation_body(cast(RequestValidationError, exc))
    return envelope(422, body, request_id_of(request))


def http_status(error: StarletteHTTPException) -> int:
    """The status this API answers for one of Starlette's errors: a body FastAPI could not
    parse (400: bad UTF-8, too deeply nested JSON) is an invalid request like any other, 422."""
    return 422 if error.status_code == 400 else error.status_code


def http_error_body(request: Request, error: StarletteHTTPException) -> dict[str, Any]:
    """``{code, message}`` of one of Starlette's HTTP errors (404 names the missing route)."""
    code = _HTTP_CODES.get(error.status_code, "http_error")
    message = error.detail if isinstance(error.detail, str) else code.replace("_", " ")
    if error.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return {"code": code, "message": message}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    error = cast(StarletteHTTPException, exc)
    body = http_error_body(request, error)
    return envelope(http_status(error), body, request_id_of(request), error.headers)


async def _db_unavailable(request: Request, _exc: Exception) -> JSONResponse:
    # a lost database is an outage (503, retryable), not a bug in the request
    body = {"code": "unavailable", "message": "the database is unavailable; retry later"}
    return envelope(503, body, request_id_of(request))


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope handlers on ``app``."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _db_unavailable)
