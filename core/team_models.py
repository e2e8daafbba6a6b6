"""SQLModel tables of teams: tenants (quota overrides, fair-share weight), their API keys, and
their webhooks with the outbox of deliveries and the log of attempts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from core.models import _created, _json, _ts, new_id


class Tenant(SQLModel, table=True):
    """A tenant. Rows appear with a tenant's first key, job or webhook; a tenant without a row
    has the default quotas and weight 1.

    ``quotas`` overrides the settings' defaults per name (``max_gpus``...): a number, or
    ``None`` for no limit. ``virtual_time`` and ``last_scheduled_at`` belong to the fair claim
    (``core.scheduling``).
    """

    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=100)
    name: str = Field(default="", max_length=200)
    weight: float = 1.0
    quotas: dict[str, Any] = _json()
    virtual_time: float = 0.0
    last_scheduled_at: datetime | None = _ts()
    created_at: datetime = _created()


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is kept; ``prefix`` (the first characters) recognises it."""

    __tablename__ = "api_keys"

    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=100)
    name: str = Field(default="", max_length=200)
    prefix: str = Field(max_length=32)
    key_hash: str = Field(max_length=64, unique=True)
    scopes: list[str] = _json(list)
    created_at: datetime = _created()
    last_used_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class Webhook(SQLModel, table=True):
    """A tenant's endpoint for job events (``events`` empty: every kind). ``secret`` signs
    each delivery; a deleted webhook keeps its row (``deleted_at``) and its delivery log."""

    __tablename__ = "webhooks"

    id: str = Field(default_factory=lambda: new_id("wh"), primary_key=True, max_length=40)
    tenant_id: str = Field(index=True, max_length=100)
    url: str = Field(max_length=2000)
    events: list[str] = _json(list)
    description: str = Field(default="", max_length=500)
    secret: str = Field(max_length=100)
    created_at: datetime = _created()
    deleted_at: datetime | None = _ts()


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook: the outbox row, written in the same transaction as the
    change it reports, and retried from here until ``delivered`` or ``failed``. ``id`` is the
    ``webhook-id`` header, the same on every attempt (receivers deduplicate on it)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: str = Field(default_factory=lambda: new_id("msg"), primary_key=True, max_length=40)
    webhook_id: str = Field(foreign_key="webhooks.id", index=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    event: str = Field(max_length=40)
    payload: dict[str, Any] = _json()
    state: str = Field(default="pending", max_length=20)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_at: datetime = _created()
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _created()
    delivered_at: datetime | None = _ts()


class WebhookAttempt(SQLModel, table=True):
    """The delivery log: one row per POST, with the answer's status (None: no answer)."""

    __tablename__ = "webhook_attempts"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: str = Field(foreign_key="webhook_deliveries.id", index=True, max_length=40)
    attempt: int
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int = 0
    created_at: datetime = _created()
