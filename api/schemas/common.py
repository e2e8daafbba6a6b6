"""Shared schemas: the error envelope, cursor pages, documented error responses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")


def as_utc(value: datetime) -> datetime:
    """Timestamps always leave as UTC-aware (SQLite hands them back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class ErrorBody(BaseModel):
    """What went wrong, in the one vocabulary of ``core.errors``."""

    code: str = Field(description="Stable machine-readable code.", examples=["invalid_config"])
    message: str = Field(description="A sentence for humans.")
    param: str | None = Field(
        default=None, description="The request field at fault (dotted).", examples=["gpus"]
    )
    details: dict[str, Any] | None = Field(default=None, description="Extra structured context.")


class ErrorEnvelope(BaseModel):
    """The body of every 4xx/5xx response; ``request_id`` equals the ``X-Request-ID`` header."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_config",
                        "message": "training_args.learning_rat: unknown key",
                        "param": "overrides.training_args.learning_rat",
                        "details": {
                            "issues": [
                                {"key": "training_args.learning_rat", "message": "unknown key"}
                            ]
                        },
                    },
                    "request_id": "5f0c6a4e9d2b4c1a8e7f6d5c4b3a2910",
                }
            ]
        }
    )

    error: ErrorBody
    request_id: str


class Page(BaseModel, Generic[T]):
    """A page of a list, newest first unless the route says otherwise."""

    data: list[T]
    has_more: bool = Field(description="Whether another page follows.")
    next_cursor: str | None = Field(
        default=None, description="Pass as `after` to get the next page; null on the last page."
    )


class ListOf(BaseModel, Generic[T]):
    """A complete (unpaged) list."""

    data: list[T]


_DESCRIPTIONS = {
    401: "Missing, unknown or revoked API key.",
    403: "The API key lacks the scope this route needs.",
    404: "Not found (or owned by another tenant).",
    409: "Conflicts with the resource's current state.",
    413: "The upload is larger than the limit.",
    422: "The request is invalid; `param` names the field.",
    429: "A quota of the tenant would be passed; `details` has `quota`, `used`, `allowed`.",
    503: "A backing service is unavailable; retry.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting the error envelope for ``statuses`` (plus 422)."""
    wanted = sorted({*statuses, 422})
    return {
        status: {"model": ErrorEnvelope, "description": _DESCRIPTIONS.get(status, "Error.")}
        for status in wanted
    }


def json_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """:func:`error_responses` for a route whose own answer is not JSON (a text log): the
    envelope is documented as ``application/json``, which is how errors leave every route."""
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    return {
        status: {"description": _DESCRIPTIONS.get(status, "Error."), "content": content}
        for status in sorted({*statuses, 422})
    }
