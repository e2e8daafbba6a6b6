"""Read side of jobs: filtered pages, queue position, latest metrics, the public view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Row, and_, bindparam, func, or_, select
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from api.pagination import newest_first, split_page
from api.schemas.jobs import JobError, JobPublic
from core.errors import JobNotFound
from core.jobs import JobState
from core.models import Job, Metric


def list_jobs(
    *,
    session: Session,
    tenant: str,
    states: list[str],
    model: str | None,
    metadata: Mapping[str, str],
    after: str | None,
    limit: int,
) -> tuple[list[Job], bool, str | None]:
    """The caller's jobs, newest first, filtered by state(s), model and metadata pairs."""
    statement = orm_select(Job).where(Job.tenant_id == tenant)
    if states:
        statement = statement.where(col(Job.state).in_(states))
    if model:
        statement = statement.where(Job.model == model)
    for key, value in metadata.items():
        statement = statement.where(col(Job.user_metadata)[key].as_string() == value)
    rows = session.exec(newest_first(statement, Job, after, limit)).all()
    return split_page(rows, limit)


_JOBS = Job.__table__.c  # type: ignore[attr-defined]
_METRICS = Metric.__table__.c  # type: ignore[attr-defined]

# Built once: a statement built per request costs more CPU than its round trip, and SQLAlchemy
# keeps the compiled form of a statement object it has seen.
_AHEAD = (
    select(func.count())
    .select_from(Job.__table__)  # type: ignore[attr-defined]
    .where(
        _JOBS.state == JobState.QUEUED.value,
        _JOBS.tenant_id == bindparam("tenant"),
        or_(
            _JOBS.priority > bindparam("priority"),
            and_(
                _JOBS.priority == bindparam("priority"),
                or_(
                    _JOBS.created_at < bindparam("created"),
                    and_(_JOBS.created_at == bindparam("created"), _JOBS.id < bindparam("id")),
                ),
            ),
        ),
    )
)
_NEWEST_STEPS = (
    select(_METRICS.split, _METRICS.name, func.max(_METRICS.step).label("step"))
    .where(_METRICS.job_id == bindparam("job_id"))
    .group_by(_METRICS.split, _METRICS.name)
    .subquery()
)
_LATEST = (
    select(_METRICS.split, _METRICS.name, _METRICS.value)
    .join(
        _NEWEST_STEPS,
        and_(
            _METRICS.split == _NEWEST_STEPS.c.split,
            _METRICS.name == _NEWEST_STEPS.c.name,
            _METRICS.step == _NEWEST_STEPS.c.step,
        ),
    )
    .where(_METRICS.job_id == bindparam("job_id"))
    .order_by(_METRICS.id)
)


_BY_ID = select(Job.__table__).where(_JOBS.id == bindparam("id"))  # type: ignore[attr-defined]

#: a job as read: the ORM object, or the row of :func:`read_job` (same attribute names)
JobRecord = Job | Row[Any]


def read_job(session: Session, job_id: str, tenant: str) -> Row[Any]:
    """The caller's job ``job_id`` as a plain row, for reading only: no ORM object to build and
    track. Another tenant's job is reported as not found."""
    row = session.connection().execute(_BY_ID, {"id": job_id}).first()
    if row is None or row.tenant_id != tenant:
        raise JobNotFound(f"job {job_id} not found", param="job_id")
    return row


def queue_position(session: Session, job: JobRecord) -> int | None:
    """How many queued jobs of the same tenant start before ``job`` (higher priority, or the
    same priority and older); None unless queued. Other tenants' jobs take turns with these
    (``core.scheduling``), so this is the job's place in its tenant's queue."""
    if job.state != JobState.QUEUED.value:
        return None
    params = {
        "tenant": job.tenant_id,
        "priority": job.priority,
        "created": job.created_at,
        "id": job.id,
    }
    return int(session.connection().execute(_AHEAD, params).scalar_one())


def latest_metrics(session: Session, job_id: str) -> dict[str, dict[str, float]]:
    """``{split: {name: value}}``, each metric at its newest step."""
    result: dict[str, dict[str, float]] = {}
    for split, name, value in session.connection().execute(_LATEST, {"job_id": job_id}):
        result.setdefault(split, {})[name] = value
    return result


def job_public(job: JobRecord, **extra: Any) -> JobPublic:
    """The public view of ``job`` (``extra``: queue_position, latest_metrics)."""
    error = None
    if job.error_code:
        error = JobError(
            code=job.error_code,
            message=job.error_message or "",
            param=job.error_param,
            user_error=job.user_error,
        )
    progress = None
    if job.max_steps:
        progress = round(min(1.0, job.step / job.max_steps), 4)
    return JobPublic(
        id=job.id,
        state=job.state,
        model=job.model,
        method=job.method,
        training_dataset=job.training_dataset_id,
        validation_dataset=job.validation_dataset_id,
        config=job.config,
        gpus=job.gpus,
        priority=job.priority,
        seed=job.seed,
        suffix=job.suffix,
        metadata=job.user_metadata,
        step=job.step,
        max_steps=job.max_steps,
        progress=progress,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        worker=job.worker,
        gpu_ids=job.gpu_ids,
        resume_from_step=job.resume_from_step,
        cancel_requested=job.cancel_requested,
        error=error,
        adapter_id=job.adapter_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        **extra,
    )
