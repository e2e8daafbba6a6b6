"""The fair claim: which queued job a worker starts next. SQL is the truth for the queue; a
broker message only wakes a worker up, and the worker takes the job that is next in fair
order, not necessarily the one the message names.

Across tenants the order is weighted fair share by stride scheduling: each tenant has a
virtual time that a job start advances by ``max(1, gpus) / weight``; the tenant with the
lowest one goes next (ties: the one served longest ago). A tenant with nothing queued or
running that submits a job joins at the lowest virtual time of the tenants waiting
(:func:`join`), so an idle tenant saves up no burst and owes no debt, and a tenant with 50
queued jobs takes turns with a tenant with one. Inside a tenant,
higher ``priority`` first, then oldest. A tenant at its ``max_running_jobs``, or whose next
jobs would pass its ``max_gpus``, is passed over: its jobs wait.

Claims are serialised (a transaction-scoped advisory lock on PostgreSQL, and the candidate row
taken ``FOR UPDATE SKIP LOCKED``; on SQLite the claim's transaction takes the write lock first),
so each claim sees the ones before it, and the claim is a conditional UPDATE from ``queued``:
two workers never start one job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import bindparam, func, text, update
from sqlmodel import Session, col, select

from core.jobs import JobState, state_event
from core.models import Job, utcnow
from core.settings import Settings
from core.team_models import Tenant
from core.tenants import ACTIVE, effective_quotas
from core.webhooks import enqueue_job_state

logger = logging.getLogger(__name__)
CLAIM_LOCK = 0x676C6D6674  # pg_advisory_xact_lock key of the claim ("glmft")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Leases(Protocol):
    """The node's GPU leases (``worker.gpus.GpuLeases``)."""

    def capacity(self) -> int: ...
    def free(self) -> int: ...
    def acquire(self, job_id: str, count: int) -> list[int] | None: ...
    def release(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class Claim:
    """What a claim found: the job now running here, or why none (``empty``: nothing queued
    that this node could ever run; ``quota``: every candidate waits on its tenant's quotas;
    ``busy``: a candidate needs GPUs this node has but are leased now; ``locked``: a candidate
    this node could start is held by another transaction for a moment). ``busy`` and
    ``locked`` claims are tried again: the message that asked for them would otherwise be
    spent with the job still waiting."""

    job: Job | None
    reason: str = "claimed"


@dataclass
class _Tenant:
    id: str
    weight: float
    virtual_time: float
    last: datetime
    running: int
    gpus: int
    limits: dict[str, int | None]


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return EPOCH
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _tenants(session: Session, settings: Settings, ids: Sequence[str]) -> list[_Tenant]:
    rows = {t.id: t for t in session.exec(select(Tenant).where(col(Tenant.id).in_(ids))).all()}
    active: dict[str, Any] = {
        tenant: (int(n), int(g or 0))
        for tenant, n, g in session.exec(
            select(Job.tenant_id, func.count(), func.sum(Job.gpus))
            .where(col(Job.state).in_(ACTIVE), col(Job.tenant_id).in_(ids))
            .group_by(col(Job.tenant_id))
        ).all()
    }
    defaults = settings.quotas.model_dump()
    # a tenant without a row (jobs made outside the API) starts level with the others
    floor = min((r.virtual_time for r in rows.values()), default=0.0)
    out = []
    for tenant_id in ids:
        row = rows.get(tenant_id) or Tenant(id=tenant_id, virtual_time=floor)
        running, gpus = active.get(tenant_id, (0, 0))
        limits = {**defaults, **{k: v for k, v in row.quotas.items() if k in defaults}}
        weight = row.weight if row.weight > 0 else 1.0
        last = _aware(row.last_scheduled_at)
        out.append(_Tenant(tenant_id, weight, row.virtual_time, last, running, gpus, limits))
    return out


#: one row is enough: counting them all grows with the queue (built once: building it costs
#: more CPU than its round trip)
_BUSY = (
    select(col(Job.id))
    .where(Job.tenant_id == bindparam("tenant_id"), col(Job.state).in_([*ACTIVE, "queued"]))
    .limit(1)
)


def join(session: Session, tenant_id: str) -> None:
    """At admission of a job (in its transaction, not committed): a tenant with nothing
    queued or running takes the lowest virtual time of the tenants that have jobs queued."""
    busy = session.connection().execute(_BUSY, {"tenant_id": tenant_id}).first()
    if busy is not None:
        return
    floor = session.exec(
        select(func.min(Tenant.virtual_time)).where(
            Tenant.id != tenant_id,
            col(Tenant.id).in_(select(Job.tenant_id).where(Job.state == "queued")),
        )
    ).one()
    if floor is not None:
        session.execute(
            update(Tenant).where(col(Tenant.id) == tenant_id).values(virtual_time=floor)
        )


def _next_job(session: Session, tenant: str, max_gpus: int, *, lock: bool = True) -> Job | None:
    """The tenant's next queued job of at most ``max_gpus`` GPUs; with ``lock``, locked for
    the claim (rows another transaction holds are passed over)."""
    query = (
        select(Job)
        .where(Job.tenant_id == tenant, Job.state == "queued", Job.gpus <= max_gpus)
        .order_by(col(Job.priority).desc(), col(Job.created_at), col(Job.id))
        .limit(1)
    )
    return session.exec(query.with_for_update(skip_locked=True) if lock else query).first()


def claim_next(
    session: Session,
    settings: Settings,
    *,
    worker: str,
    leases: Leases,
    now: datetime | None = None,
) -> Claim:
    """Claim for ``worker`` the queued job next in fair order that it can start now, with its
    GPUs leased; commits. The job is returned running (attempt counted, heartbeat set)."""
    session.commit()  # the lock below lives as long as the claim's own transaction
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
    elif dialect == "sqlite":  # take the write lock now: claims of all processes in turn
        session.execute(text("BEGIN IMMEDIATE"))
    queued = list(
        session.exec(
            select(Job.tenant_id).where(Job.state == "queued").group_by(col(Job.tenant_id))
        ).all()
    )
    tenants = _tenants(session, settings, queued)
    tenants.sort(key=lambda t: (t.virtual_time, t.last, t.id))
    capacity, free = leases.capacity(), leases.free()
    waiting = set()
    for tenant in tenants:
        max_running, max_gpus = tenant.limits["max_running_jobs"], tenant.limits["max_gpus"]
        if max_running is not None and tenant.running >= max_running:
            waiting.add("quota")
            continue
        room = capacity if max_gpus is None else min(capacity, max_gpus - tenant.gpus)
        job = _next_job(session, tenant.id, min(room, free))
        if job is not None:
            claimed = _take(session, job, tenant, worker, leases, now or utcnow())
            return Claim(claimed, "claimed" if claimed is not None else "busy")
        if _next_job(session, tenant.id, min(room, free), lock=False) is not None:
            # another transaction holds its row (the API recording the job's publish, a
            # cancel): it is free again in a moment, and this claim's message names it
            waiting.add("locked")
        elif _next_job(session, tenant.id, room, lock=False) is not None:
            waiting.add("busy")  # it fits this node once GPUs free up here
        elif _next_job(session, tenant.id, capacity, lock=False) is not None:
            waiting.add("quota")  # it waits for the tenant's GPUs
    session.rollback()
    reason = next((r for r in ("locked", "busy", "quota") if r in waiting), "empty")
    return Claim(None, reason)


def _take(
    session: Session,
    job: Job,
    tenant: _Tenant,
    worker: str,
    leases: Leases,
    now: datetime,
) -> Job | None:
    """Lease the job's GPUs and move it to running, with the tenant's virtual time advanced,
    in one commit; ``None`` (nothing changed) when the lease or the claim fails."""
    gpus = leases.acquire(job.id, job.gpus)
    if gpus is None:
        session.rollback()
        return None
    try:
        result = session.execute(
            update(Job)
            .where(col(Job.id) == job.id, col(Job.state) == "queued")
            .values(
                state="running",
                worker=worker,
                gpu_ids=gpus,
                attempt=job.attempt + 1,
                heartbeat_at=now,
                started_at=now,
                cancel_requested=False,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LookupError(f"job {job.id} left the queue while it was claimed")
        attempt = job.attempt + 1
        session.add(
            state_event(
                job.id,
                JobState.RUNNING,
                JobState.QUEUED.value,
                f"attempt {attempt} on {worker}",
                attempt=attempt,
                worker=worker,
                gpu_ids=gpus,
            )
        )
        enqueue_job_state(session, job.id, "running")
        stride = max(1, job.gpus) / tenant.weight
        _advance(session, tenant, tenant.virtual_time + stride, now)
        session.commit()
    except Exception:
        session.rollback()
        leases.release(job.id)
        logger.warning("claim of job %s for %s failed", job.id, worker, exc_info=True)
        return None
    claimed = session.get(Job, job.id, populate_existing=True)
    logger.info(
        "claimed job %s of tenant %s (priority %d) for %s", job.id, tenant.id, job.priority, worker
    )
    return claimed


def _advance(session: Session, tenant: _Tenant, virtual_time: float, now: datetime) -> None:
    """Store the tenant's new virtual time (its row is made on its first claim)."""
    result = session.execute(
        update(Tenant)
        .where(col(Tenant.id) == tenant.id)
        .values(virtual_time=virtual_time, last_scheduled_at=now)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        session.add(Tenant(id=tenant.id, virtual_time=virtual_time, last_scheduled_at=now))
        session.flush()


def waiting_job(session: Session, settings: Settings, tenant_id: str) -> str | None:
    """A queued job of ``tenant_id`` that its running-jobs or GPU quota may have kept waiting,
    or ``None``. A claim that passed over such jobs consumed its message, so a worker whose
    job of this tenant ends publishes a wake-up for one of them."""
    limits = effective_quotas(session, settings, tenant_id)
    if limits["max_running_jobs"] is None and limits["max_gpus"] is None:
        return None  # nothing of this tenant waited on a quota: its messages are all there
    return session.exec(
        select(Job.id).where(Job.tenant_id == tenant_id, Job.state == "queued").limit(1)
    ).first()
