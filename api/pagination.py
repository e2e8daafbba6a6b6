"""Cursor pagination over ``(created_at, id)``, newest first; cursors are opaque strings."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, or_
from sqlmodel import col
from sqlmodel.sql.expression import SelectOfScalar

from api.schemas.common import as_utc
from core.errors import Invalid

Row = TypeVar("Row", bound=Any)
MAX_LIMIT = 100


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """An opaque cursor for the position just after ``(created_at, row_id)``."""
    raw = json.dumps([as_utc(created_at).isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, param: str = "after") -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; raises ``Invalid`` naming ``param``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, row_id = json.loads(raw)
        return as_utc(datetime.fromisoformat(stamp)), str(row_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise Invalid(f"{param} is not a cursor this API returned", param=param) from exc


def newest_first(
    statement: SelectOfScalar[Row], model: Any, after: str | None, limit: int
) -> SelectOfScalar[Row]:
    """Order ``statement`` newest first, start after the cursor, fetch one extra row."""
    created, row_id = col(model.created_at), col(model.id)
    if after:
        stamp, last_id = decode_cursor(after)
        statement = statement.where(or_(created < stamp, and_(created == stamp, row_id < last_id)))
    return statement.order_by(created.desc(), row_id.desc()).limit(limit + 1)


def split_page(rows: Sequence[Row], limit: int) -> tuple[list[Row], bool, str | None]:
    """``(page, has_more, next_cursor)`` from the ``limit + 1`` rows fetched."""
    page = list(rows[:limit])
    has_more = len(rows) > limit
    cursor = encode_cursor(page[-1].created_at, page[-1].id) if has_more and page else None
    return page, has_more, cursor
