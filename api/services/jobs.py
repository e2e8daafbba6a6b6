"""Jobs: admission (model, datasets, config fitted to the base model, GPUs and capacity),
idempotent creation, and the check that admits without creating."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from api.queue import TRAINING_QUEUE, Enqueuer
from api.schemas.common import as_utc
from api.schemas.jobs import JobCheck, JobCreate, JobSpec
from api.services.datasets import get_dataset, resolve_model
from api.services.job_config import resolve_config
from api.services.model_checks import fit_config_to_model
from api.services.vision_jobs import check_base_and_data
from core import webhooks
from core.datasets import archive_validation
from core.errors import (
    DatasetNotFound,
    IdempotencyKeyReused,
    InsufficientCapacity,
    InvalidDataset,
    Unavailable,
)
from core.jobs import JobState, state_event
from core.models import BaseModelRecord, Dataset, Job, JobEvent, WorkerNode, utcnow
from core.quotas import check_job_admission
from core.scheduling import join
from core.settings import Settings
from core.tenants import effective_quotas, ensure_tenant, lock_tenant

logger = logging.getLogger(__name__)


def request_hash(job_in: JobCreate) -> str:
    """A digest of the request's meaning (defaults filled in, key order irrelevant)."""
    body = job_in.model_dump(mode="json")
    if body.get("priority") == 0:  # the default: digests made before priorities stay valid
        del body["priority"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: built once (building a statement per request costs more CPU than its round trip)
_BY_IDEMPOTENCY_KEY = select(Job).where(
    Job.tenant_id == bindparam("tenant"), Job.idempotency_key == bindparam("key")
)


def _replay(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    job = session.exec(_BY_IDEMPOTENCY_KEY, params={"tenant": tenant, "key": key}).first()
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


def _worker_pool(session: Session, settings: Settings) -> tuple[Sequence[WorkerNode], str]:
    """Online workers (heartbeat within ``heartbeat_timeout_s``) when there are any, else the
    known-but-offline ones; with the word for which."""
    nodes = session.exec(select(WorkerNode)).all()
    since = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    online = [n for n in nodes if as_utc(n.last_seen) >= since]
    return (online, "online") if online else (nodes, "known")


def default_gpus(session: Session, settings: Settings, model: str) -> int:
    """The GPUs of a job that asks for none: the registry entry's ``gpus``; unset, 1 when a
    worker (online ones, else known ones) has GPUs, else 0: a CPU-only fleet trains on CPU."""
    entry = settings.models.get(model)
    if entry is not None and entry.gpus is not None:
        return entry.gpus
    pool, _ = _worker_pool(session, settings)
    return 1 if any(node.gpus for node in pool) else 0


def check_capacity(session: Session, settings: Settings, gpus: int) -> None:
    """Refuse a job no worker could ever hold (ARCHITECTURE.md decision 5).

    Online workers decide when there are any; else the known-but-offline ones; with no worker
    known at all only ``max_gpus_per_job`` applies, so a job can be queued before the first
    worker starts.
    """
    limit = settings.limits.max_gpus_per_job
    if gpus > limit:
        raise InsufficientCapacity(f"gpus is {gpus}; the limit per job is {limit}", param="gpus")
    if gpus == 0:
        return
    pool, label = _worker_pool(session, settings)
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


@dataclass(frozen=True)
class Admission:
    """What a job spec resolves to on this service."""

    config: dict[str, Any]
    max_steps: int | None
    gpus: int
    notes: list[str]


def admit(
    *,
    session: Session,
    settings: Settings,
    spec: JobSpec,
    model: BaseModelRecord,
    has_validation: bool,
) -> Admission:
    """Resolve and check ``spec``'s config against its base model, and its GPUs against the
    fleet. The config is the run config (``trainer.contract.run_config``): its data files are
    the job directory's, where the worker copies the datasets, so no server path is stored on
    the job (or shown to callers)."""
    gpus = spec.gpus if spec.gpus is not None else default_gpus(session, settings, model.name)
    resolved = resolve_config(
        method=spec.method,
        config=spec.config,
        overrides=spec.overrides,
        seed=spec.seed,
        has_validation=has_validation,
        limits=settings.limits,
        gpus=gpus,
    )
    fitted = fit_config_to_model(resolved.config, Path(model.path), spec.overrides)
    check_capacity(session, settings, gpus)
    return Admission(fitted.config, resolved.max_steps, gpus, fitted.notes)


def check_job(*, session: Session, settings: Settings, spec: JobSpec) -> JobCheck:
    """What ``POST /jobs`` would make of ``spec``, without datasets, storing nothing: lets a
    client check the model, config and capacity before it uploads anything."""
    model = resolve_model(session, spec.model)
    admission = admit(
        session=session,
        settings=settings,
        spec=spec,
        model=model,
        has_validation=False,
    )
    return JobCheck(
        model=spec.model,
        method=spec.method,
        gpus=admission.gpus,
        max_steps=admission.max_steps,
        config=admission.config,
        notes=admission.notes,
    )


def build_job(
    *, session: Session, settings: Settings, tenant: str, job_in: JobCreate
) -> tuple[Job, list[str]]:
    """Validate ``job_in`` fully: the (unsaved) queued job, and the admission's notes."""
    model = resolve_model(session, job_in.model)
    train = usable_dataset(session, tenant, job_in.training_dataset, "training_dataset")
    val = None
    if job_in.validation_dataset is not None:
        val = usable_dataset(session, tenant, job_in.validation_dataset, "validation_dataset")
    admission = admit(
        session=session,
        settings=settings,
        spec=job_in,
        model=model,
        # an archive carries its own validation split
        has_validation=val is not None or archive_validation(Path(train.path)) is not None,
    )
    check_base_and_data(
        settings=settings,
        model=job_in.model,
        model_dir=Path(model.path),
        train=train,
        validation=val,
        config=admission.config,
    )
    job = Job(
        tenant_id=tenant,
        state=JobState.QUEUED.value,
        model=job_in.model,
        method=job_in.method,
        training_dataset_id=train.id,
        validation_dataset_id=val.id if val else None,
        config=admission.config,
        gpus=admission.gpus,
        priority=job_in.priority,
        seed=job_in.seed,
        suffix=job_in.suffix,
        user_metadata=job_in.metadata,
        max_steps=admission.max_steps,
        max_attempts=settings.limits.max_attempts,
    )
    return job, admission.notes


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
    job, notes = build_job(session=session, settings=settings, tenant=tenant, job_in=job_in)
    enter_queue(session, settings, tenant, job.gpus)
    job.idempotency_key, job.request_hash = idempotency_key, digest
    session.add(job)
    session.flush()  # the job's row first: its event refers to it
    session.add(
        state_event(job.id, JobState.QUEUED, None, "created", gpus=job.gpus, notes=notes or None)
    )
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
    # after the publish: a job withdrawn for a broker failure never announced itself
    webhooks.enqueue(session, tenant, "job.queued", {"job": webhooks.job_view(job)})
    session.commit()
    return job, True


def wake_waiting_jobs(session: Session, enqueuer: Enqueuer, tenant: str, limit: int = 100) -> int:
    """Publish a wake-up message for each of the tenant's queued jobs (up to ``limit``): its
    quotas changed, and jobs they kept waiting may have lost their messages to claims that
    passed them over. Extra messages are harmless (a claim finds nothing and stops)."""
    queued = session.exec(
        select(Job.id)
        .where(Job.tenant_id == tenant, Job.state == JobState.QUEUED.value)
        .limit(limit)
    ).all()
    for job_id in queued:
        try:
            enqueuer.enqueue_job(job_id, TRAINING_QUEUE)
        except Exception:  # the queue reconciler publishes them later
            logger.exception("wake-up of tenant %s's jobs failed", tenant)
            return 0
    return len(queued)


def enter_queue(session: Session, settings: Settings, tenant: str, gpus: int) -> None:
    """Before a job enters the queue: the tenant's quotas checked (429) and its place in the
    fair order set (``scheduling.join``).

    With a ``max_queued_jobs`` quota the tenant's row is locked first, so that admissions
    counting its queue take turns; the caller's commit releases the lock. Without one there is
    nothing to count, and admissions of one tenant run side by side.
    """
    ensure_tenant(session, tenant)
    if effective_quotas(session, settings, tenant)["max_queued_jobs"] is not None:
        lock_tenant(session, tenant)
    check_job_admission(session, settings, tenant, gpus)
    join(session, tenant)


def publish(session: Session, enqueuer: Enqueuer, job: Job) -> None:
    """Publish ``job`` and record when (``enqueued_at``); raises what the broker raises."""
    enqueuer.enqueue_job(job.id, TRAINING_QUEUE)
    job.enqueued_at = utcnow()
    try:
        session.execute(  # the object already holds the value: nothing to synchronize
            update(Job)
            .where(col(Job.id) == job.id)
            .values(enqueued_at=job.enqueued_at)
            .execution_options(synchronize_session=False)
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
        session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))  # type: ignore[arg-type]
        session.delete(job)
        session.commit()
        raise Unavailable(
            "the job queue is unavailable; retry the request (with the same Idempotency-Key)"
        ) from exc
