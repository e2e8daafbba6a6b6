"""Turn the trainer's events into SQL rows: job events, metrics, checkpoints and progress."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from core import webhooks
from core.models import Checkpoint, Job, JobEvent, Metric

_STEP_METRICS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "epoch",
    "trained_tokens",
)
WEBHOOK_KINDS = ("checkpoint", "eval")


def record_events(session: Session, job: Job, events: list[dict[str, Any]], *, offset: int) -> None:
    """Store ``events`` (parsed ``events.jsonl`` lines) for ``job`` and, in the same commit,
    ``offset``: the end of the last of them in the file, where a later attempt resumes reading."""
    progress: dict[str, Any] = {"events_offset": offset}
    for event in events:
        kind = str(event.get("event", "unknown"))
        session.add(JobEvent(job_id=job.id, kind=kind, message=_summary(event), data=event))
        if kind == "started":
            progress["max_steps"] = event.get("max_steps")
        elif kind == "step":
            progress["step"] = int(event["step"])
            _add_metrics(
                session,
                job.id,
                int(event["step"]),
                "train",
                {k: event.get(k) for k in _STEP_METRICS},
            )
        elif kind == "eval":
            _add_metrics(
                session,
                job.id,
                int(event["step"]),
                str(event.get("split", "validation")),
                event.get("metrics", {}),
            )
        elif kind == "checkpoint":
            _add_checkpoint(session, job, event)
        if kind in WEBHOOK_KINDS:  # delivered later, committed with the rows below
            webhooks.enqueue(session, job.tenant_id, f"job.{kind}", _webhook_data(job, event))
    session.execute(update(Job).where(col(Job.id) == job.id).values(**progress))
    session.commit()


def _add_metrics(
    session: Session, job_id: str, step: int, split: str, values: dict[str, Any]
) -> None:
    for name, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            session.add(
                Metric(job_id=job_id, step=step, split=split, name=name, value=float(value))
            )


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
