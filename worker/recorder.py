"""Turn the trainer's events into SQL rows: job events, metrics, checkpoints and progress.

A resumed attempt logs again the steps between its checkpoint and where the previous attempt
died: a metric is one row per (job, step, split, name), the newest value winning. Checkpoints
that the trainer rotated away (``save_total_limit``) lose their rows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core import webhooks
from core.models import Checkpoint, Job, JobEvent, Metric, utcnow

_STEP_METRICS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "epoch",
    "trained_tokens",
)
WEBHOOK_KINDS = ("checkpoint", "eval")
MetricKey = tuple[int, str, str]


def record_events(session: Session, job: Job, events: list[dict[str, Any]], *, offset: int) -> bool:
    """Store ``events`` (parsed ``events.jsonl`` lines) for ``job`` and, in the same commit,
    ``offset``: the end of the last of them in the file, where a later attempt resumes reading.

    Fenced by ``job.attempt``: when the job has moved on to another attempt nothing is stored
    and False is returned (this worker lost the job).
    """
    progress: dict[str, Any] = {"events_offset": offset}
    metrics: dict[MetricKey, float] = {}
    checkpoints = False
    for event in events:
        kind = str(event.get("event", "unknown"))
        session.add(JobEvent(job_id=job.id, kind=kind, message=_summary(event), data=event))
        if kind == "started":
            progress["max_steps"] = event.get("max_steps")
        elif kind == "step":
            progress["step"] = int(event["step"])
            _collect(metrics, int(event["step"]), "train", {k: event.get(k) for k in _STEP_METRICS})
        elif kind == "eval":
            split = str(event.get("split", "validation"))
            _collect(metrics, int(event["step"]), split, event.get("metrics", {}))
        elif kind == "checkpoint":
            _store_metrics(session, job.id, metrics)  # a checkpoint copies its eval metrics
            metrics = {}
            _add_checkpoint(session, job, event)
            checkpoints = True
        if kind in WEBHOOK_KINDS:  # delivered later, committed with the rows below
            webhooks.enqueue(session, job.tenant_id, f"job.{kind}", _webhook_data(job, event))
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


def _add_checkpoint(session: Session, job: Job, event: dict[str, Any]) -> None:
    step = int(event["step"])
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
        existing.path, existing.bytes, existing.metrics = event["path"], event["bytes"], metrics
        session.add(existing)
        return
    session.add(
        Checkpoint(
            job_id=job.id,
            tenant_id=job.tenant_id,
            step=step,
            path=event["path"],
            bytes=int(event["bytes"]),
            metrics=metrics,
        )
    )


def _webhook_data(job: Job, event: dict[str, Any]) -> dict[str, Any]:
    if event.get("event") == "checkpoint":
        detail = {"step": event.get("step"), "bytes": event.get("bytes")}
        return {"job": webhooks.job_view(job), "checkpoint": detail}
    detail = {k: event.get(k) for k in ("step", "split", "metrics")}
    return {"job": webhooks.job_view(job), "eval": detail}


def _summary(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "step":
        return f"step {event.get('step')}: loss {event.get('loss')}"
    if kind == "checkpoint":
        return f"checkpoint at step {event.get('step')} ({event.get('bytes')} bytes)"
    if kind == "status":
        detail = f": {event.get('code')}: {event.get('message')}" if event.get("code") else ""
        return f"trainer {event.get('status')}{detail}"
    if kind == "eval":
        return f"{event.get('split', 'validation')} metrics at step {event.get('step')}"
    if kind == "compile":
        return (
            f"compiled {event.get('layers')} decoder layers in {event.get('seconds')} s "
            f"({event.get('frames')} compiled frames, {event.get('graph_breaks')} graph breaks)"
        )
    return str(kind)
