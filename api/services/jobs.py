"""Jobs: idempotent creation, capacity check, cancel and resume through ``core.jobs``."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from api.queue import TRAINING_QUEUE, Enqueuer
from api.schemas.common import as_utc
from api.schemas.jobs import JobCreate
from api.services.datasets import get_dataset, resolve_model
from api.services.job_config import resolve_config
from api.services.vision_jobs import check_base_and_data
from core.errors import (
    DatasetNotFound,
    IdempotencyKeyReused,
    InsufficientCapacity,
    InvalidDataset,
    Unavailable,
)
from core.jobs import JobState
from core.models import Dataset, Job, WorkerNode, utcnow
from core.settings import Settings

logger = logging.getLogger(__name__)


def request_hash(job_in: JobCreate) -> str:
    """A digest of the request's meaning (defaults filled in, key order irrelevant)."""
    canonical = json.dumps(job_in.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    statement = select(Job).where(Job.tenant_id == tenant, Job.idempotency_key == key)
    job = session.exec(statement).first()
    if job is not None and job.request_hash != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for another request (job {job.id})",
            param="Idempotency-Key",
            details={"job_id": job.id},
        )
    return job


def usable_dataset(session: Session, tenant: str, dataset_id: str, param: str) -> Dataset:
    """A dataset a job may use: the caller's, present and valid; raises ``InvalidDataset``."""
    try:
        dataset = get_dataset(session, tenant, dataset_id, param)
    except DatasetNotFound as exc:
        raise InvalidDataset(f"dataset {dataset_id} not found", param=param) from exc
    if not dataset.valid:
        raise InvalidDataset(
            f"dataset {dataset_id} is invalid ({dataset.error_count} errors); "
            f"see GET /datasets/{dataset_id}/report",
            param=param,
        )
    return dataset


def check_capacity(session: Session, settings: Settings, gpus: int) -> None:
    """Refuse a job no worker could ever hold (ARCHITECTURE.md decision 5).

    Online workers (heartbeat within ``heartbeat_timeout_s``) decide when there are any; else
    the known-but-offline ones; with no worker known at all only ``max_gpus_per_job`` applies,
    so a job can be queued before the first worker starts.
    """
    limit = settings.limits.max_gpus_per_job
    if gpus > limit:
        raise InsufficientCapacity(f"gpus is {gpus}; the limit per job is {limit}", param="gpus")
    if gpus == 0:
        return
    nodes = session.exec(select(WorkerNode)).all()
    since = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    online = [n for n in nodes if as_utc(n.last_seen) >= since]
    pool, label = (online, "online") if online else (nodes, "known")
    if not pool:
        return
    biggest = max(len(n.gpus) for n in pool)
    if gpus > biggest:
        raise InsufficientCapacity(
            f"gpus is {gpus} but the largest {label} worker has {biggest} GPU(s); "
            "ask for fewer GPUs (0 trains on CPU)",
            param="gpus",
            details={"max_gpus": biggest, "workers": sorted(n.name for n in pool)},
        )


def build_job(*, session: Session, settings: Settings, tenant: str, job_in: JobCreate) -> Job:
    """Validate ``job_in`` fully and return the (unsaved) queued job."""
    base = resolve_model(session, job_in.model)
    train = usable_dataset(session, tenant, job_in.training_dataset, "training_dataset")
    val = None
    if job_in.validation_dataset is not None:
        val = usable_dataset(session, tenant, job_in.validation_dataset, "validation_dataset")
    resolved = resolve_config(
        method=job_in.method,
        config=job_in.config,
        overrides=job_in.overrides,
        seed=job_in.seed,
        train_file=Path(train.path),
        val_file=Path(val.path) if val else None,
        limits=settings.limits,
        gpus=job_in.gpus,
    )
    check_base_and_data(
        settings=settings,
        model=job_in.model,
        model_dir=Path(base.path),
        train=train,
        validation=val,
        config=resolved.config,
    )
    check_capacity(session, settings, job_in.gpus)
    return Job(
        tenant_id=tenant,
        state=JobState.QUEUED.value,
        model=job_in.model,
        method=job_in.method,
        training_dataset_id=train.id,
        validation_dataset_id=val.id if val else None,
        config=resolved.config,
        gpus=job_in.gpus,
        seed=job_in.seed,
        suffix=job_in.suffix,
        user_metadata=job_in.metadata,
        max_steps=resolved.max_steps,
        max_attempts=settings.limits.max_attempts,
    )


def create_job(
    *,
    session: Session,
    settings: Settings,
    enqueuer: Enqueuer,
    tenant: str,
    job_in: JobCreate,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Create and enqueue a job, or replay the one ``idempotency_key`` made.

    Returns ``(job, created)``. The message is published only after the row is committed; if
    the broker refuses it the row is removed again (no worker can have seen it) and
    ``Unavailable`` tells the client to retry with the same key. A replay of a queued job that
    was never known to be published (the API died between commit and publish) publishes it;
    the reaper's reconciler does the same for jobs nobody asks about again.
    """
    digest = request_hash(job_in)
    if idempotency_key is not None:
        existing = _replay(session, tenant, idempotency_key, digest)
        if existing is not None:
            if existing.state == JobState.QUEUED.value and existing.enqueued_at is None:
                publish(session, enqueuer, existing)
            return existing, False
    job = build_job(session=session, settings=settings, tenant=tenant, job_in=job_in)
    job.idempotency_key, job.request_hash = idempotency_key, digest
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        existing = _replay(session, tenant, idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, False
    if settings.pause_after_commit_s:  # fault injection: a crash between commit and publish
        time.sleep(settings.pause_after_commit_s)
    _enqueue_or_withdraw(session, enqueuer, job)
    return job, True


def publish(session: Session, enqueuer: Enqueuer, job: Job) -> None:
    """Publish ``job`` and record when (``enqueued_at``); raises what the broker raises."""
    enqueuer.enqueue_job(job.id, TRAINING_QUEUE)
    job.enqueued_at = utcnow()
    try:
        session.execute(
            update(Job).where(col(Job.id) == job.id).values(enqueued_at=job.enqueued_at)
        )
        session.commit()
    except SQLAlchemyError:  # published all the same: the reconciler finds the message
        session.rollback()
        logger.warning("job %s: published, but its enqueued_at was not stored", job.id)


def _enqueue_or_withdraw(session: Session, enqueuer: Enqueuer, job: Job) -> None:
    try:
        publish(session, enqueuer, job)
    except Exception as exc:  # any broker failure: kombu raises many unrelated types
        logger.exception("enqueue of job %s failed; withdrawing it", job.id)
        session.delete(job)
        session.commit()
        raise Unavailable(
            "the job queue is unavailable; retry the request (with the same Idempotency-Key)"
        ) from exc
