"""Turn the trainer's events into SQL rows: job events, metrics, checkpoints and progress.

Events arrive parsed (``trainer.contract.events.parse_event``): every one becomes a job event;
a line of no known kind or shape (:class:`UnknownEvent`) is stored as it was read, and logged,
but moves nothing.

A resumed attempt logs again the steps between its checkpoint and where the previous attempt
died: a metric is one row per (job, step, split, name), the newest value winning. Checkpoints
that the trainer rotated away (``save_total_limit``) lose their rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core import webhooks
from core.models import Checkpoint, Job, JobEvent, Metric, utcnow
from trainer.contract.events import (
    CheckpointEvent,
    CompileEvent,
    EvalEvent,
    StartedEvent,
    StatusEvent,
    StepEvent,
    TrainerEvent,
    UnknownEvent,
    event_data,
)

logger = logging.getLogger(__name__)
_STEP_METRICS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "epoch",
    "trained_tokens",
)
MetricKey = tuple[int, str, str]
Event = TrainerEvent | UnknownEvent


def record_events(session: Session, job: Job, events: Sequence[Event], *, offset: int) -> bool:
    """Store ``events`` (parsed ``events.jsonl`` lines) for ``job`` and, in the same commit,
    ``offset``: the end of the last of them in the file, where a later attempt resumes reading.

    Fenced by ``job.attempt``: when the job has moved on to another attempt nothing is stored
    and False is returned (this worker lost the job).
    """
    progress: dict[str, Any] = {"events_offset": offset}
    metrics: dict[MetricKey, float] = {}
    checkpoints = False
    for event in events:
        data = event_data(event)
        session.add(JobEvent(job_id=job.id, kind=event.event, message=_summary(event), data=data))
        if isinstance(event, UnknownEvent):
            logger.warning(
                "job %s: unrecognised trainer event %r: %s", job.id, event.event, event.error
            )
        elif isinstance(event, StartedEvent):
            progress["max_steps"] = event.max_steps
        elif isinstance(event, StepEvent):
            progress["step"] = event.step
            _collect(metrics, event.step, "train", {k: data.get(k) for k in _STEP_METRICS})
        elif isinstance(event, EvalEvent):
            _collect(metrics, event.step, event.split, event.metrics)
        elif isinstance(event, CheckpointEvent):
            _store_metrics(session, job.id, metrics)  # a checkpoint copies its eval metrics
            metrics = {}
            _add_checkpoint(session, job, event)
            checkpoints = True
        if isinstance(event, CheckpointEvent | EvalEvent):  # delivered with the rows below
            webhooks.enqueue(
                session, job.tenant_id, f"job.{event.event}", _webhook_data(job, event)
            )
    _store_metrics(session, job.id, metrics)
    if checkpoints:
        _forget_rotated(session, job.id)
    owned = session.execute(
        update(Job).where(col(Job.id) == job.id, col(Job.attempt) == job.attempt).values(**progress)
    )
    if not owned.rowcount:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.commit()
    return True


def _collect(metrics: dict[MetricKey, float], step: int, split: str, values: Any) -> None:
    for name, value in dict(values or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics[(step, split, str(name))] = float(value)


def _store_metrics(session: Session, job_id: str, metrics: dict[MetricKey, float]) -> None:
    """Insert, or overwrite the value of, one row per metric key."""
    if not metrics:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "step": step,
            "split": split,
            "name": name,
            "value": value,
            "created_at": now,
        }
        for (step, split, name), value in metrics.items()
    ]
    statement = dialect.insert(Metric).values(rows)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["job_id", "step", "split", "name"],
            set_={"value": statement.excluded.value},
        )
    )


def _forget_rotated(session: Session, job_id: str) -> None:
    """Rows of checkpoints whose directory the trainer deleted (``save_total_limit``)."""
    rows = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    # gone from an output directory that is still there (not an unmounted volume)
    gone = [c.id for c in rows if Path(c.path).parent.is_dir() and not Path(c.path).is_dir()]
    if gone:
        session.execute(delete(Checkpoint).where(col(Checkpoint.id).in_(gone)))


def _add_checkpoint(session: Session, job: Job, event: CheckpointEvent) -> None:
    step = event.step
    existing = session.exec(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step)
    ).first()
    evals = session.exec(
        select(Metric).where(
            Metric.job_id == job.id, Metric.step == step, Metric.split == "validation"
        )
    ).all()
    metrics = {m.name: m.value for m in evals}
    if existing is not None:  # a resumed attempt saved the same step again
        existing.path, existing.bytes, existing.metrics = event.path, event.bytes, metrics
        session.add(existing)
        return
    session.add(
        Checkpoint(
            job_id=job.id,
            tenant_id=job.tenant_id,
            step=step,
            path=event.path,
            bytes=event.bytes,
            metrics=metrics,
        )
    )


def _webhook_data(job: Job, event: CheckpointEvent | EvalEvent) -> dict[str, Any]:
    if isinstance(event, CheckpointEvent):
        detail: dict[str, Any] = {"step": event.step, "bytes": event.bytes}
        return {"job": webhooks.job_view(job), "checkpoint": detail}
    detail = {"step": event.step, "split": event.split, "metrics": event.metrics}
    return {"job": webhooks.job_view(job), "eval": detail}


def _summary(event: Event) -> str:
    if isinstance(event, StepEvent):
        return f"step {event.step}: loss {event.loss}"
    if isinstance(event, CheckpointEvent):
        return f"checkpoint at step {event.step} ({event.bytes} bytes)"
    if isinstance(event, StatusEvent):
        detail = f": {event.code}: {event.message}" if event.code else ""
        return f"trainer {event.status}{detail}"
    if isinstance(event, EvalEvent):
        return f"{event.split} metrics at step {event.step}"
    if isinstance(event, CompileEvent):
        return (
            f"compiled {event.layers} decoder layers in {event.seconds} s "
            f"({event.frames} compiled frames, {event.graph_breaks} graph breaks)"
        )
    return event.event
