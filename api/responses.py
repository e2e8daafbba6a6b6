"""Responses built from a model already shaped for the client.

A route that declares ``response_model`` and returns the model makes FastAPI validate it again
(in a second thread hop for a ``def`` route) and then serialize it. A route that builds its
public model itself returns :func:`model_response` instead: one pydantic serialization straight
to JSON bytes. The ``response_model`` stays on the route for the OpenAPI document.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    """``model`` as ``application/json`` (by alias, as FastAPI would render it)."""
    return Response(
        content=model.__pydantic_serializer__.to_json(model, by_alias=True),
        status_code=status_code,
        media_type="application/json",
    )
