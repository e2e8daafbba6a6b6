"""SQLModel tables: the SQL store is the truth for datasets, jobs, events, metrics, checkpoints,
adapters and evaluations (ARCHITECTURE.md decision 1). Tenant-owned rows carry ``tenant_id``
(decision 10)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable))


def _created() -> Any:
    return Field(
        default_factory=utcnow,
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True),
    )


def _json(factory: Callable[[], Any] = dict) -> Any:
    return Field(default_factory=factory, sa_column=Column(JSON, nullable=False))


class BaseModelRecord(SQLModel, table=True):
    """A base model known to the registry (mirrors settings; adapters reference ``name``)."""

    __tablename__ = "base_models"

    name: str = Field(primary_key=True, max_length=200)
    path: str
    description: str = ""
    created_at: datetime = _created()


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"

    id: str = Field(default_factory=lambda: new_id("ds"), primary_key=True, max_length=40)
    tenant_id: str = Field(index=True, max_length=100)
    filename: str
    path: str
    bytes: int
    # what the dataset holds on disk when it differs from ``bytes`` (an archive, unpacked):
    # the figure the storage quota counts
    stored_bytes: int | None = Field(default=None, sa_type=BigInteger)
    sha256: str = Field(max_length=64, index=True)
    conversations: int = 0
    valid: bool = False
    error_count: int = 0
    report: dict[str, Any] = _json()
    base_model: str | None = None
    created_at: datetime = _created()


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_state_created_at", "state", "created_at"),  # queue position, reaper
        # the fair claim: a tenant's queued jobs, highest priority first, then oldest
        Index("ix_jobs_state_tenant_priority", "state", "tenant_id", "priority", "created_at"),
    )

    id: str = Field(default_factory=lambda: new_id("job"), primary_key=True, max_length=40)
    tenant_id: str = Field(index=True, max_length=100)
    state: str = Field(index=True, max_length=20)
    model: str = Field(index=True, max_length=200)
    method: str = Field(max_length=20)
    training_dataset_id: str = Field(foreign_key="datasets.id", max_length=40)
    validation_dataset_id: str | None = Field(
        default=None, foreign_key="datasets.id", max_length=40
    )
    config: dict[str, Any] = _json()
    gpus: int = 1
    priority: int = 0  # inside its tenant's queue: higher runs first
    seed: int | None = None
    suffix: str | None = Field(default=None, max_length=64)
    user_metadata: dict[str, Any] = _json()
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    attempt: int = 0
    max_attempts: int = 3
    worker: str | None = Field(default=None, max_length=200)
    gpu_ids: list[int] = _json(list)
    heartbeat_at: datetime | None = _ts()
    # when the job's broker message was last published; null until the first publish is
    # known to have happened (the reconciler republishes queued jobs no message covers)
    enqueued_at: datetime | None = _ts()
    step: int = 0
    max_steps: int | None = None
    # bytes of the trainer's events.jsonl already stored, committed with the events themselves:
    # a later attempt records what a dead worker left unread, and nothing twice
    events_offset: int = Field(default=0, sa_type=BigInteger)
    resume_from_step: int | None = None
    cancel_requested: bool = False
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    error_param: str | None = Field(default=None, max_length=200)
    user_error: bool | None = None
    adapter_id: str | None = Field(default=None, max_length=300)
    created_at: datetime = _created()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40)
    kind: str = Field(max_length=32)
    message: str = ""
    data: dict[str, Any] = _json()
    created_at: datetime = _created()


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    # a resumed attempt logs again the steps after its checkpoint: one row per value, the last
    __table_args__ = (
        UniqueConstraint("job_id", "step", "split", "name", name="uq_metrics_job_step_split_name"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40)
    step: int
    split: str = Field(max_length=16)  # train | validation | test
    name: str = Field(max_length=64)
    value: float
    created_at: datetime = _created()


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=40)
    tenant_id: str = Field(index=True, max_length=100)
    step: int
    path: str
    bytes: int
    metrics: dict[str, Any] = _json()
    created_at: datetime = _created()


class Adapter(SQLModel, table=True):
    __tablename__ = "adapters"

    id: str = Field(primary_key=True, max_length=300)  # ft:<base>:<suffix>:<job>
    tenant_id: str = Field(index=True, max_length=100)
    job_id: str | None = Field(default=None, foreign_key="jobs.id", max_length=40)
    base_model: str = Field(index=True, max_length=200)
    method: str = Field(max_length=20)
    step: int | None = None
    path: str
    created_at: datetime = _created()


class WorkerNode(SQLModel, table=True):
    """A worker node and its GPU inventory, refreshed by its heartbeat; the API refuses jobs that
    no online node could ever hold (ARCHITECTURE.md decision 5)."""

    __tablename__ = "workers"

    name: str = Field(primary_key=True, max_length=200)
    gpus: list[int] = _json(list)
    queues: list[str] = _json(list)
    last_seen: datetime = _created()
    started_at: datetime = _created()


class Evaluation(SQLModel, table=True):
    """An evaluation: a dataset's prompts answered by 1..8 models, scored against the
    references. ``models`` holds ``{"name", "ref"}`` per model as resolved at admission (``ref``
    is what the caller named: a base model, an adapter id or ``{job, checkpoint}``).
    ``dataset_id`` is no foreign key: the samples are copied at admission, so the dataset may
    be deleted afterwards. ``runner`` and ``heartbeat_at`` fence the runner thread that owns a
    running evaluation (``core.evaluations``)."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id", "idempotency_key", name="uq_evaluations_tenant_idempotency_key"
        ),
        Index("ix_evaluations_state_created_at", "state", "created_at"),  # the runner's claim
    )

    id: str = Field(default_factory=lambda: new_id("eval"), primary_key=True, max_length=40)
    tenant_id: str = Field(index=True, max_length=100)
    name: str | None = Field(default=None, max_length=200)
    state: str = Field(max_length=20)
    models: list[dict[str, Any]] = _json(list)
    dataset_id: str = Field(max_length=40)
    params: dict[str, Any] = _json()
    samples: int = 0
    skipped: int = 0
    done: int = 0  # outputs stored (of samples x models)
    metrics: dict[str, Any] = _json()
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_hash: str | None = Field(default=None, max_length=64)
    runner: str | None = Field(default=None, max_length=200)
    heartbeat_at: datetime | None = _ts()
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    error_param: str | None = Field(default=None, max_length=200)
    created_at: datetime = _created()
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()


class EvaluationSample(SQLModel, table=True):
    """One conversation of an evaluation: the prompt (every message before the last assistant
    reply) and the reference (that reply). ``index`` is its 0-based position in the dataset."""

    __tablename__ = "evaluation_samples"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "index", name="uq_evaluation_samples_index"),
    )

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: str = Field(foreign_key="evaluations.id", index=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    index: int
    line: int | None = None
    messages: list[dict[str, Any]] = _json(list)
    reference: str


class EvaluationOutput(SQLModel, table=True):
    """One model's answer to one sample and its scores; stored once (the unique key), so a
    resumed evaluation never generates it again."""

    __tablename__ = "evaluation_outputs"
    __table_args__ = (
        UniqueConstraint("evaluation_id", "index", "model", name="uq_evaluation_outputs_sample"),
    )

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: str = Field(foreign_key="evaluations.id", index=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    index: int
    model: str = Field(max_length=300)
    text: str
    finish_reason: str = Field(max_length=20)
    completion_tokens: int = 0
    scores: dict[str, float] = _json()
    created_at: datetime = _created()


class EvaluationEvent(SQLModel, table=True):
    __tablename__ = "evaluation_events"

    id: int | None = Field(default=None, primary_key=True)
    evaluation_id: str = Field(foreign_key="evaluations.id", index=True, max_length=40)
    tenant_id: str = Field(max_length=100)
    kind: str = Field(max_length=32)
    message: str = ""
    data: dict[str, Any] = _json()
    created_at: datetime = _created()
