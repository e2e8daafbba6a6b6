"""The scope each route needs, written into the OpenAPI document as ``x-glmft-scope``
(``read``, ``write``, ``admin``; absent: no key needed) with its 401 and 403 answers.

The scope is not declared twice: it is read off the route's dependencies, the same ones that
enforce it (``api.deps``): ``require_admin`` means ``admin``, ``get_tenant`` the method's scope
(GET: ``read``, else ``write``), ``get_principal`` alone ``read``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from api.deps import get_principal, get_tenant, require_admin, required_scope

SCOPE_KEY = "x-glmft-scope"
_ANSWERS = {
    "401": "Missing, unknown or revoked API key.",
    "403": "The API key lacks the scope this route needs.",
}


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            found.add(dependency.call)
        found |= _calls(dependency)
    return found


def route_scope(dependant: Dependant, method: str) -> str | None:
    """The scope ``method`` on a route with ``dependant`` needs; ``None``: no key needed."""
    calls = _calls(dependant)
    if require_admin in calls:
        return "admin"
    if get_tenant in calls:
        return required_scope(method)
    if get_principal in calls:
        return "read"
    return None


def document_scopes(routes: Iterable[BaseRoute], schema: dict[str, Any]) -> None:
    """Add ``x-glmft-scope`` and the 401/403 answers to every operation that needs a key."""
    for route in iter_route_contexts(list(routes)):  # included routers' routes too
        path = route.path_format
        if (
            not isinstance(route.original_route, APIRoute)
            or path not in schema["paths"]
            or not path
        ):
            continue
        for method in route.methods or ():
            operation = schema["paths"][path].get(method.lower())
            scope = route_scope(route.dependant, method)
            if operation is None or scope is None:
                continue
            operation[SCOPE_KEY] = scope
            shape = "OpenAIError" if path.startswith("/v1/") else "ErrorEnvelope"
            ref = {"$ref": f"#/components/schemas/{shape}"}
            for status, description in _ANSWERS.items():
                operation["responses"].setdefault(
                    status,
                    {"description": description, "content": {"application/json": {"schema": ref}}},
                )


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` document the scopes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_scopes(app.routes, build())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]
