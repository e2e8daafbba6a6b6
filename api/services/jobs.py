"""Jobs: admission (model, datasets, config fitted to the base model, GPUs and capacity),
idempotent creation, and the check that admits without creating."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from api.queue import TRAINING_QUEUE, Enqueuer
from api.schemas.common import as_utc
from api.schemas.jobs import JobCheck, JobCreate, JobSpec
from api.services.datasets import TOMBSTONE, DatasetFile, resolve_model
from api.services.job_config import resolve_config
from api.services.model_checks import fit_config_to_model
from api.services.vision_jobs import check_base_and_data
from core import webhooks
from core.datasets import archive_validation
from core.errors import (
    IdempotencyKeyReused,
    InsufficientCapacity,
    InvalidDataset,
    Unavailable,
)
from core.jobs import JobState, state_event
from core.models import Dataset, Job, JobEvent, WorkerNode, new_id, utcnow
from core.quotas import check_job_admission
from core.scheduling import join
from core.settings import Limits, Settings
from core.tenants import admission_limits, lock_tenant, quota_limits

logger = logging.getLogger(__name__)


def request_hash(job_in: JobCreate) -> str:
    """A digest of the request's meaning (defaults filled in, key order irrelevant)."""
    body = job_in.model_dump(mode="json")
    if body.get("priority") == 0:  # the default: digests made before priorities stay valid
        del body["priority"]
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: built once (building a statement per request costs more CPU than its round trip)
_BY_IDEMPOTENCY_KEY = (
    select(col(Job.id), col(Job.request_hash))
    .where(Job.tenant_id == bindparam("tenant"), Job.idempotency_key == bindparam("key"))
    .limit(1)
)
_DATASET = sql_select(
    col(Dataset.id),
    col(Dataset.tenant_id),
    col(Dataset.path),
    col(Dataset.valid),
    col(Dataset.error_count),
).where(col(Dataset.id) == bindparam("id"))
_FLEET = sql_select(col(WorkerNode.name), col(WorkerNode.gpus), col(WorkerNode.last_seen))
_INSERT_JOB = insert(Job)
_INSERT_EVENT = insert(JobEvent)
_DELETE_EVENTS = delete(JobEvent).where(col(JobEvent.job_id) == bindparam("job_id"))
_DELETE_JOB = delete(Job).where(col(Job.id) == bindparam("job_id"))
_RECORD_PUBLISH = (
    update(Job).where(col(Job.id) == bindparam("job_id")).values(enqueued_at=bindparam("at"))
)


def _replay(session: Session, tenant: str, key: str, digest: str) -> Job | None:
    found = (
        session.connection().execute(_BY_IDEMPOTENCY_KEY, {"tenant": tenant, "key": key}).first()
    )
    if found is None:
        return None
    if found.request_hash != digest:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was used for another request (job {found.id})",
            param="Idempotency-Key",
            details={"job_id": found.id},
        )
    return session.get(Job, found.id)


def usable_dataset(session: Session, tenant: str, dataset_id: str, param: str) -> DatasetFile:
    """A dataset a job may use: the caller's, present and valid; raises ``InvalidDataset``."""
    row = session.connection().execute(_DATASET, {"id": dataset_id}).first()
    if row is None or row.tenant_id != tenant or row.path == TOMBSTONE:
        raise InvalidDataset(f"dataset {dataset_id} not found", param=param)
    if not row.valid:
        raise InvalidDataset(
            f"dataset {dataset_id} is invalid ({row.error_count} errors); "
            f"see GET /datasets/{dataset_id}/report",
            param=param,
        )
    return DatasetFile(row.id, row.path)


def _worker_pool(
    session: Session, settings: Settings
) -> tuple[Sequence[Row[str, list[int], datetime]], str]:
    """Online workers (heartbeat within ``heartbeat_timeout_s``) when there are any, else the
    known-but-offline ones; with the word for which. Plain rows (name, GPUs, last seen): a job
    asking for GPUs reads the whole fleet, so no ORM object is built per worker."""
    nodes = session.connection().execute(_FLEET).all()
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
    model_dir: Path,
    has_validation: bool,
) -> Admission:
    """Resolve and check ``spec``'s config against its base model in ``model_dir``, and its
    GPUs against the fleet. The config is the run config (``trainer.contract.run_config``): its
    data files are the job directory's, where the worker copies the datasets, so no server path
    is stored on the job (or shown to callers)."""
    gpus = spec.gpus if spec.gpus is not None else default_gpus(session, settings, spec.model)
    try:
        model_version = (model_dir / "config.json").stat().st_mtime_ns
    except OSError:
        model_version = None
    key = json.dumps(
        {
            "method": spec.method,
            "config": spec.config,
            "overrides": spec.overrides,
            "seed": spec.seed,
            "has_validation": has_validation,
            "limits": settings.limits.model_dump(mode="json"),
            "gpus": gpus,
            "model_dir": str(model_dir),
            "model_version": model_version,
        },
        sort_keys=True,
    )
    config, max_steps, notes = json.loads(_fitted_config(key))
    check_capacity(session, settings, gpus)
    return Admission(config, max_steps, gpus, notes)


@lru_cache(maxsize=256)
def _fitted_config(key: str) -> str:
    """``[config, max_steps, notes]`` (JSON) of the admission inputs in ``key`` (JSON): the
    config resolved, checked and fitted to the base model. A pure function of its inputs (the
    base model's ``config.json`` by its modification time), so each process resolves a spec
    once; a refusal raises and is not kept."""
    inputs = json.loads(key)
    resolved = resolve_config(
        method=inputs["method"],
        config=inputs["config"],
        overrides=inputs["overrides"],
        seed=inputs["seed"],
        has_validation=inputs["has_validation"],
        limits=Limits.model_validate(inputs["limits"]),
        gpus=inputs["gpus"],
    )
    fitted = fit_config_to_model(resolved.config, Path(inputs["model_dir"]), inputs["overrides"])
    return json.dumps([fitted.config, resolved.max_steps, fitted.notes])


def base_model_dir(session: Session, settings: Settings, name: str) -> Path:
    """The directory of base model ``name``: this process's registry entry (``sync_registry``
    mirrors the entries into ``base_models``), else the stored one; raises ``ModelNotFound``."""
    entry = settings.models.get(name)
    if entry is not None:
        return Path(entry.path)
    return Path(resolve_model(session, name).path)


def check_job(*, session: Session, settings: Settings, spec: JobSpec) -> JobCheck:
    """What ``POST /jobs`` would make of ``spec``, without datasets, storing nothing: lets a
    client check the model, config and capacity before it uploads anything."""
    admission = admit(
        session=session,
        settings=settings,
        spec=spec,
        model_dir=base_model_dir(session, settings, spec.model),
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
    base_dir = base_model_dir(session, settings, job_in.model)
    train = usable_dataset(session, tenant, job_in.training_dataset, "training_dataset")
    val = None
    if job_in.validation_dataset is not None:
        val = usable_dataset(session, tenant, job_in.validation_dataset, "validation_dataset")
    admission = admit(
        session=session,
        settings=settings,
        spec=job_in,
        model_dir=base_dir,
        # an archive carries its own validation split
        has_validation=val is not None or archive_validation(Path(train.path)) is not None,
    )
    check_base_and_data(
        settings=settings,
        model=job_in.model,
        model_dir=base_dir,
        train=train,
        validation=val,
        config=admission.config,
    )
    job = Job(
        # every defaulted field given: a default factory left to the model costs a signature
        # inspection per object
        id=new_id("job"),
        created_at=utcnow(),
        gpu_ids=[],
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
    event = state_event(
        job.id, JobState.QUEUED, None, "created", gpus=job.gpus, notes=notes or None
    )
    try:
        # two Core INSERTs: the ORM's unit of work costs more CPU than their round trips, and
        # the job stays a plain object (its values are all set here)
        connection = session.connection()
        connection.execute(_INSERT_JOB, job.model_dump())
        connection.execute(_INSERT_EVENT, event.model_dump(exclude={"id"}))
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the insert
        session.rollback()
        existing = _replay(session, tenant, idempotency_key or "", digest)
        if existing is None:
            raise
        return existing, False
    if settings.pause_after_commit_s:  # fault injection: a crash between commit and publish
        time.sleep(settings.pause_after_commit_s)
    _send_or_withdraw(session, enqueuer, job)
    # once published (a job withdrawn for a broker failure never announced itself), and in
    # the commit that records the publish
    webhooks.enqueue(session, tenant, "job.queued", {"job": webhooks.job_view(job)})
    _record_publish(session, job)
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
    limits = admission_limits(session, settings, tenant)
    if limits["max_queued_jobs"] is not None:
        # read again under the lock: the quotas as they are now
        limits = quota_limits(settings, lock_tenant(session, tenant).quotas)
    check_job_admission(session, tenant, gpus, limits)
    join(session, tenant)


def publish(session: Session, enqueuer: Enqueuer, job: Job) -> None:
    """Publish ``job`` and record when (``enqueued_at``); raises what the broker raises."""
    enqueuer.enqueue_job(job.id, TRAINING_QUEUE)
    _record_publish(session, job)


def _record_publish(session: Session, job: Job) -> None:
    """Store ``enqueued_at`` (now), committing with it what the session holds. When the store
    fails the job is published all the same, and the reconciler, which sees no
    ``enqueued_at``, publishes it again (a claim takes it once)."""
    now = utcnow()
    set_committed_value(job, "enqueued_at", now)  # shown on the object, not flushed again
    try:
        session.connection().execute(_RECORD_PUBLISH, {"job_id": job.id, "at": now})
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        logger.error("job %s: published, but its enqueued_at was not stored", job.id)


def _send_or_withdraw(session: Session, enqueuer: Enqueuer, job: Job) -> None:
    """Publish ``job``'s message; when the broker refuses it, remove the job (no worker can
    have seen it) and raise ``Unavailable``."""
    try:
        enqueuer.enqueue_job(job.id, TRAINING_QUEUE)
    except Exception as exc:  # any broker failure: kombu raises many unrelated types
        logger.exception("enqueue of job %s failed; withdrawing it", job.id)
        connection = session.connection()
        connection.execute(_DELETE_EVENTS, {"job_id": job.id})
        connection.execute(_DELETE_JOB, {"job_id": job.id})
        session.commit()
        raise Unavailable(
            "the job queue is unavailable; retry the request (with the same Idempotency-Key)"
        ) from exc
