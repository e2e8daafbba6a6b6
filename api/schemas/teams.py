"""Schemas of teams: API keys, tenants with their quotas, webhooks and their deliveries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import UtcDatetime

Scope = Literal["read", "write", "admin"]
TENANT_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"


def _read_write() -> list[Scope]:
    return ["read", "write"]


class KeyCreate(BaseModel):
    """A new API key for a tenant (made with it when the tenant has no row yet)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"tenant": "team-a", "scopes": ["write"], "name": "ci"}]},
    )

    tenant: str = Field(pattern=TENANT_PATTERN, description="The tenant the key acts for.")
    scopes: list[Scope] = Field(
        default_factory=_read_write,
        min_length=1,
        description="`read` (GETs), `write` (also uploads, jobs, cancels, chat), `admin` (also "
        "keys, tenants, every tenant's metrics); each includes the ones before it.",
    )
    name: str = Field(default="", max_length=200, description="What the key is for.")


class KeyPublic(BaseModel):
    """An API key as listed: never the key itself, only its first characters."""

    id: str
    object: Literal["api_key"] = "api_key"
    tenant: str
    name: str
    prefix: str = Field(description="The key's first characters, e.g. `sk-glmft-AbCd1234`.")
    scopes: list[str]
    created_at: UtcDatetime
    last_used_at: UtcDatetime | None = Field(
        default=None, description="Updated at most once a minute."
    )
    revoked_at: UtcDatetime | None = None


class KeyCreated(KeyPublic):
    """A key just made: ``key`` is shown this once and stored nowhere (only its hash)."""

    key: str


class QuotaFigure(BaseModel):
    """One quota: what the tenant uses now and what it may (``null``: no limit)."""

    used: int
    allowed: int | None


class TenantPublic(BaseModel):
    """A tenant: its fair-share weight, its quotas with their usage, and its overrides."""

    id: str
    object: Literal["tenant"] = "tenant"
    name: str = ""
    weight: float = 1.0
    quotas: dict[str, QuotaFigure] = Field(
        description="`max_running_jobs`, `max_queued_jobs`, `max_gpus`, `max_storage_bytes`."
    )
    overrides: dict[str, int | None] = Field(
        default_factory=dict, description="The quotas set for this tenant (others: defaults)."
    )
    created_at: UtcDatetime | None = None


class TenantUpdate(BaseModel):
    """Change a tenant (fields left out stay); ``quotas`` replaces its overrides."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"weight": 2, "quotas": {"max_gpus": 4}}]},
    )

    name: str | None = Field(default=None, max_length=200)
    weight: float | None = Field(
        default=None, gt=0, le=1000, description="Its share of job starts against weight 1."
    )
    quotas: dict[str, int | None] | None = Field(
        default=None,
        description="Quota name -> limit (`null`: no limit); names left out use "
        "the server's defaults.",
    )


class WebhookCreate(BaseModel):
    """A webhook for your tenant's job events."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://ci.example.com/glmft", "events": ["job.succeeded"]}]
        },
    )

    url: str = Field(max_length=2000, description="http(s), no credentials in it.")
    events: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="Event kinds to send (empty: all): job.queued, job.running, job.checkpoint, "
        "job.eval, job.succeeded, job.failed, job.cancelled.",
    )
    description: str = Field(default="", max_length=500)


class WebhookPublic(BaseModel):
    """A webhook (its signing secret is shown only when it is made)."""

    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str]
    description: str
    created_at: UtcDatetime


class WebhookCreated(WebhookPublic):
    """A webhook just made: ``secret`` (``whsec_...``) signs its deliveries; shown once."""

    secret: str


class AttemptPublic(BaseModel):
    """One POST of a delivery: the status code answered (``null``: no answer, see ``error``)."""

    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: int
    created_at: UtcDatetime


class DeliveryPublic(BaseModel):
    """One event for one webhook, with its attempts (the delivery log)."""

    id: str = Field(description="The `webhook-id` header, the same on every attempt.")
    object: Literal["webhook_delivery"] = "webhook_delivery"
    webhook_id: str
    event: str
    state: str = Field(description="pending | delivered | failed")
    attempts: int
    last_status: int | None = None
    last_error: str | None = None
    next_attempt_at: UtcDatetime | None = Field(
        default=None, description="When it is tried again (pending only)."
    )
    payload: dict[str, Any]
    log: list[AttemptPublic] = Field(default_factory=list)
    created_at: UtcDatetime
    delivered_at: UtcDatetime | None = None
