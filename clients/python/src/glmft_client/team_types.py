"""Pydantic models of teams: API keys, tenants and their quotas, webhooks and deliveries.

Each mirrors a schema of the server's OpenAPI document (the drift test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from glmft_client.types import _Request, _Response

Scope = Literal["read", "write", "admin"]
_READ_WRITE: list[Scope] = ["read", "write"]


class KeyCreateRequest(_Request):
    """The body of ``POST /keys`` (an admin key)."""

    tenant: str
    scopes: list[Scope] = Field(default_factory=lambda: _READ_WRITE.copy())
    name: str = ""


class ApiKey(_Response):
    """An API key as listed: its prefix, never the key."""

    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKey):
    """A key just made: ``key`` is shown this once."""

    key: str


class QuotaFigure(_Response):
    """What a tenant uses of a quota, and what it may (``None``: no limit)."""

    used: int
    allowed: int | None


class Tenant(_Response):
    """A tenant's weight, quotas (used and allowed) and overrides."""

    id: str
    object: Literal["tenant"] = "tenant"
    name: str = ""
    weight: float = 1.0
    quotas: dict[str, QuotaFigure]
    overrides: dict[str, int | None] = Field(default_factory=dict)
    created_at: datetime | None = None


class TenantUpdateRequest(_Request):
    """The body of ``PATCH /tenants/{id}``; ``quotas`` replaces the overrides."""

    name: str | None = None
    weight: float | None = None
    quotas: dict[str, int | None] | None = None


class WebhookCreateRequest(_Request):
    """The body of ``POST /webhooks``."""

    url: str
    events: list[str] = Field(default_factory=list, description="Empty: every kind.")
    description: str = ""


class Webhook(_Response):
    """A webhook for your tenant's job events."""

    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str
    created_at: datetime


class WebhookCreated(Webhook):
    """A webhook just made: ``secret`` verifies its deliveries (shown once)."""

    secret: str


class WebhookAttempt(_Response):
    """One POST of a delivery and the status code it got (``None``: no answer)."""

    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    created_at: datetime


class WebhookDelivery(_Response):
    """One event for one webhook, with its attempts."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event: str
    state: str
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    payload: dict[str, Any]
    log: list[WebhookAttempt] = Field(default_factory=list)
    created_at: datetime
    delivered_at: datetime | None = None
