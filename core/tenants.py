"""Tenants: their rows, their effective quotas (settings' defaults, overridden per tenant) and
what they use now, counted in SQL.

Usage: ``max_running_jobs`` counts running and cancelling jobs, ``max_queued_jobs`` queued
ones, ``max_gpus`` the GPUs of the running ones, ``max_storage_bytes`` the datasets (an
archive unpacked) and the checkpoints the trainer reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.errors import Invalid
from core.models import Checkpoint, Dataset, Job
from core.settings import QuotaSettings, Settings
from core.team_models import Tenant

QUOTAS = tuple(QuotaSettings.model_fields)
ACTIVE = ("running", "cancelling")  # jobs holding a worker slot and their GPUs


def ensure_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant's row, created (and committed) when it has none yet."""
    row = session.get(Tenant, tenant_id)
    if row is not None:
        return row
    try:
        row = Tenant(id=tenant_id)
        session.add(row)
        session.commit()
    except IntegrityError:  # a concurrent request created it first
        session.rollback()
    found = session.get(Tenant, tenant_id)
    if found is None:  # only a database that drops committed rows gets here
        raise RuntimeError(f"tenant {tenant_id} vanished after it was created")
    return found


def lock_tenant(session: Session, tenant_id: str) -> Tenant:
    """The tenant's row, locked until the transaction ends (PostgreSQL ``FOR UPDATE``), so
    that admissions checking one tenant's quota happen one at a time. A tenant without a row
    gets one first (committed)."""
    statement = (  # read again under the lock: its quotas as they are now
        select(Tenant)
        .where(Tenant.id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = session.exec(statement).first()
    if row is not None:
        return row
    ensure_tenant(session, tenant_id)
    return session.exec(statement).one()


def check_quota_overrides(quotas: dict[str, Any]) -> dict[str, int | None]:
    """Overrides by quota name: a non-negative integer or ``None`` (no limit)."""
    unknown = sorted(set(quotas) - set(QUOTAS))
    if unknown:
        raise Invalid(
            f"unknown quota {unknown[0]!r}; known: {', '.join(QUOTAS)}",
            param=f"quotas.{unknown[0]}",
        )
    for name, value in quotas.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise Invalid(f"quota {name} must be an integer or null", param=f"quotas.{name}")
        if value is not None and value < 0:
            raise Invalid(f"quota {name} must be >= 0", param=f"quotas.{name}")
    return dict(quotas)


def quota_limits(settings: Settings, overrides: Mapping[str, Any]) -> dict[str, int | None]:
    """``{quota: limit or None}``: a tenant's ``overrides`` over the settings' defaults."""
    limits: dict[str, int | None] = settings.quotas.model_dump()
    limits.update({k: v for k, v in overrides.items() if k in limits})
    return limits


_QUOTAS = select(col(Tenant.quotas)).where(col(Tenant.id) == bindparam("tenant_id"))


def admission_limits(session: Session, settings: Settings, tenant_id: str) -> dict[str, int | None]:
    """:func:`effective_quotas` read the way an admission reads them, as one column (no ORM
    object), the tenant's row created when it has none. Reads what is committed: call it
    before the session holds changes."""
    row = session.connection().execute(_QUOTAS, {"tenant_id": tenant_id}).first()
    overrides = row.quotas if row is not None else ensure_tenant(session, tenant_id).quotas
    return quota_limits(settings, overrides)


def effective_quotas(session: Session, settings: Settings, tenant_id: str) -> dict[str, int | None]:
    """``{quota: limit or None}``: the tenant's overrides over the settings' defaults."""
    row = session.get(Tenant, tenant_id)
    return quota_limits(settings, row.quotas if row is not None else {})


def storage_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's datasets (still on disk) and recorded checkpoints."""
    datasets = session.exec(
        select(func.coalesce(func.sum(func.coalesce(Dataset.stored_bytes, Dataset.bytes)), 0))
        .where(Dataset.tenant_id == tenant_id)
        .where(Dataset.path != "")  # a deleted dataset's tombstone holds nothing
    ).one()
    checkpoints = session.exec(
        select(func.coalesce(func.sum(Checkpoint.bytes), 0)).where(
            Checkpoint.tenant_id == tenant_id
        )
    ).one()
    return int(datasets) + int(checkpoints)


def queued_jobs(session: Session, tenant_id: str) -> int:
    """The tenant's queued jobs (``max_queued_jobs``'s usage alone)."""
    statement = select(func.count()).where(Job.tenant_id == tenant_id, Job.state == "queued")
    return int(session.exec(statement).one())


def usage(session: Session, tenant_id: str) -> dict[str, int]:
    """``{quota: amount used now}`` for every quota."""
    counts = dict(
        session.exec(
            select(Job.state, func.count())
            .where(Job.tenant_id == tenant_id)
            .where(col(Job.state).in_([*ACTIVE, "queued"]))
            .group_by(col(Job.state))
        ).all()
    )
    gpus = session.exec(
        select(func.coalesce(func.sum(Job.gpus), 0))
        .where(Job.tenant_id == tenant_id)
        .where(col(Job.state).in_(ACTIVE))
    ).one()
    return {
        "max_running_jobs": sum(int(counts.get(s, 0)) for s in ACTIVE),
        "max_queued_jobs": int(counts.get("queued", 0)),
        "max_gpus": int(gpus),
        "max_storage_bytes": storage_bytes(session, tenant_id),
    }
