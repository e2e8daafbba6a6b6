"""``/keys`` and ``/tenants``: API keys and tenants (quotas, fair-share weight), for admin
keys; ``/tenant``: the caller's own tenant, its quotas and what it uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from sqlmodel import Session, col, select

from api.deps import AdminDep, EnqueuerDep, SessionDep, SettingsDep, TenantDep
from api.schemas.common import ListOf, error_responses
from api.schemas.teams import (
    KeyCreate,
    KeyCreated,
    KeyPublic,
    QuotaFigure,
    TenantPublic,
    TenantUpdate,
)
from api.services.jobs import wake_waiting_jobs
from core import keys
from core.errors import TenantNotFound
from core.keys import check_tenant_id
from core.settings import Settings
from core.team_models import ApiKey, Tenant
from core.tenants import check_quota_overrides, effective_quotas, ensure_tenant, usage

router = APIRouter(tags=["admin"])
KeyId = Annotated[str, Path(description="The key id (or its shown prefix).")]
TenantId = Annotated[str, Path(description="The tenant id.", max_length=100)]


def key_public(row: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=row.id,
        tenant=row.tenant_id,
        name=row.name,
        prefix=row.prefix,
        scopes=row.scopes,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def tenant_public(session: Session, settings: Settings, tenant_id: str) -> TenantPublic:
    """A tenant's view: quotas with usage (a tenant without a row has the defaults)."""
    row = session.get(Tenant, tenant_id)
    limits, used = effective_quotas(session, settings, tenant_id), usage(session, tenant_id)
    return TenantPublic(
        id=tenant_id,
        name=row.name if row else "",
        weight=row.weight if row else 1.0,
        quotas={q: QuotaFigure(used=used[q], allowed=limits[q]) for q in limits},
        overrides=dict(row.quotas) if row else {},
        created_at=row.created_at if row else None,
    )


@router.post("/keys", status_code=201, response_model=KeyCreated, responses=error_responses(403))
def create_key(body: KeyCreate, session: SessionDep, _admin: AdminDep) -> KeyCreated:
    """Make an API key for a tenant; the answer holds the key, shown this once."""
    row, key = keys.create_key(session, tenant=body.tenant, scopes=body.scopes, name=body.name)
    return KeyCreated(**key_public(row).model_dump(), key=key)


@router.get("/keys", response_model=ListOf[KeyPublic], responses=error_responses(403))
def list_keys(
    session: SessionDep,
    _admin: AdminDep,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    include_revoked: bool = True,
) -> ListOf[KeyPublic]:
    """Every key (of one tenant with `tenant`), newest first: prefix, scopes, last use."""
    rows = keys.list_keys(session, tenant=tenant, include_revoked=include_revoked)
    return ListOf(data=[key_public(r) for r in rows])


@router.get("/keys/{key_id}", response_model=KeyPublic, responses=error_responses(403, 404))
def get_key(key_id: KeyId, session: SessionDep, _admin: AdminDep) -> KeyPublic:
    """One key."""
    return key_public(keys.find_key(session, key_id))


@router.delete("/keys/{key_id}", response_model=KeyPublic, responses=error_responses(403, 404))
def revoke_key(key_id: KeyId, request: Request, session: SessionDep, _admin: AdminDep) -> KeyPublic:
    """Revoke a key: from the next request on it answers 401. It stays listed."""
    row = keys.revoke_key(session, keys.find_key(session, key_id))
    request.app.state.key_cache.forget_key(row.id)  # other processes: within KEY_CACHE_TTL_S
    return key_public(row)


@router.get("/tenants", response_model=ListOf[TenantPublic], responses=error_responses(403))
def list_tenants(
    session: SessionDep, settings: SettingsDep, _admin: AdminDep
) -> ListOf[TenantPublic]:
    """Every tenant with a row (made with its first key, job or setting)."""
    ids = session.exec(select(Tenant.id).order_by(col(Tenant.id))).all()
    return ListOf(data=[tenant_public(session, settings, t) for t in ids])


@router.get(
    "/tenants/{tenant_id}", response_model=TenantPublic, responses=error_responses(403, 404)
)
def get_tenant(
    tenant_id: TenantId, session: SessionDep, settings: SettingsDep, _admin: AdminDep
) -> TenantPublic:
    """A tenant: weight, quotas (used and allowed) and its overrides."""
    if session.get(Tenant, tenant_id) is None:
        raise TenantNotFound(f"tenant {tenant_id} not found", param="tenant_id")
    return tenant_public(session, settings, tenant_id)


@router.patch("/tenants/{tenant_id}", response_model=TenantPublic, responses=error_responses(403))
def update_tenant(
    tenant_id: TenantId,
    body: TenantUpdate,
    session: SessionDep,
    settings: SettingsDep,
    enqueuer: EnqueuerDep,
    _admin: AdminDep,
) -> TenantPublic:
    """Set a tenant's name, fair-share weight or quota overrides (made if it has no row); its
    queued jobs are woken up, as new quotas may let them start."""
    check_tenant_id(tenant_id, "tenant_id")
    row = ensure_tenant(session, tenant_id)
    if body.quotas is not None:
        row.quotas = check_quota_overrides(body.quotas)
    if body.name is not None:
        row.name = body.name
    if body.weight is not None:
        row.weight = body.weight
    session.add(row)
    session.commit()
    if body.quotas is not None:
        wake_waiting_jobs(session, enqueuer, tenant_id)
    return tenant_public(session, settings, tenant_id)


@router.get("/tenant", response_model=TenantPublic, responses=error_responses())
def get_own_tenant(session: SessionDep, settings: SettingsDep, tenant: TenantDep) -> TenantPublic:
    """Your tenant: its quotas, what it uses now and what it may."""
    return tenant_public(session, settings, tenant)
