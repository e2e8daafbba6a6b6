"""What a runner writes for the evaluation it owns, each write fenced (``core.evaluations``):
its start, batches of scored outputs with progress events, a model's metrics, the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from core.errors import AppError
from core.evaluations import ClaimLost, EvaluationState, add_event, fence
from core.models import Evaluation, EvaluationEvent, EvaluationOutput, EvaluationSample, utcnow


@dataclass
class Progress:
    """When the last ``progress`` event was written, to space them out."""

    interval_s: float
    step: int
    done: int = 0
    last_done: int = 0
    last_at: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        """A tenth of the answers, or ``interval_s``, since the last event."""
        return self.done - self.last_done >= self.step or (
            self.done > self.last_done and time.monotonic() - self.last_at >= self.interval_s
        )

    def mark(self) -> None:
        """An event was written now."""
        self.last_done, self.last_at = self.done, time.monotonic()


class RunStore:
    """The fenced writes of one runner for one evaluation."""

    def __init__(self, db: Engine, evaluation: Evaluation, runner: str) -> None:
        self.db = db
        self.evaluation = evaluation
        self.runner = runner
        self.total = evaluation.samples * len(evaluation.models)
        self.metrics: dict[str, Any] = dict(evaluation.metrics)

    def session(self) -> Session:
        """A new session on the store."""
        return Session(self.db, expire_on_commit=False)

    def samples(self) -> dict[int, EvaluationSample]:
        """The evaluation's samples by index."""
        with self.session() as session:
            rows = session.exec(
                select(EvaluationSample).where(EvaluationSample.evaluation_id == self.evaluation.id)
            ).all()
        return {s.index: s for s in rows}

    def stored(self) -> set[tuple[str, int]]:
        """``(model, index)`` of every output already stored."""
        with self.session() as session:
            rows = session.exec(
                select(EvaluationOutput.model, EvaluationOutput.index).where(
                    EvaluationOutput.evaluation_id == self.evaluation.id
                )
            ).all()
        return {(str(model), int(index)) for model, index in rows}

    def start(self, done: int) -> None:
        """Record the start (``resumed`` when an earlier runner had started it)."""
        with self.session() as session:
            started_before = session.exec(
                select(func.count()).where(
                    EvaluationEvent.evaluation_id == self.evaluation.id,
                    col(EvaluationEvent.kind).in_(["started", "resumed"]),
                )
            ).one()
            fence(session, self.evaluation.id, self.runner, done=done)
            if started_before:
                add_event(
                    session,
                    self.evaluation,
                    "resumed",
                    f"resumed by {self.runner}: {done} of {self.total} answers were stored, "
                    f"{self.total - done} to generate",
                    runner=self.runner,
                    done=done,
                    total=self.total,
                )
            else:
                add_event(
                    session,
                    self.evaluation,
                    "started",
                    f"started by {self.runner}: {self.total} answers to generate",
                    runner=self.runner,
                    done=done,
                    total=self.total,
                )
            session.commit()

    def beat(self) -> None:
        """The heartbeat; raises ``ClaimLost`` once the evaluation is no longer ours."""
        with self.session() as session:
            fence(session, self.evaluation.id, self.runner)
            session.commit()

    def add_outputs(self, outputs: list[EvaluationOutput], progress: Progress) -> None:
        """Store scored outputs (with a progress event when one is due)."""
        with self.session() as session:
            fence(
                session,
                self.evaluation.id,
                self.runner,
                done=col(Evaluation.done) + len(outputs),
            )
            session.add_all(outputs)
            progress.done += len(outputs)
            if progress.due():
                add_event(
                    session,
                    self.evaluation,
                    "progress",
                    f"{progress.done}/{self.total} answers",
                    done=progress.done,
                    total=self.total,
                )
                progress.mark()
            session.commit()

    def pairs(self, model: str) -> tuple[list[str], list[str]]:
        """The model's stored outputs and their references, by sample index."""
        with self.session() as session:
            rows = session.exec(
                select(EvaluationOutput.text, EvaluationSample.reference)
                .join(
                    EvaluationSample,
                    (col(EvaluationSample.evaluation_id) == col(EvaluationOutput.evaluation_id))
                    & (col(EvaluationSample.index) == col(EvaluationOutput.index)),
                )
                .where(
                    EvaluationOutput.evaluation_id == self.evaluation.id,
                    EvaluationOutput.model == model,
                )
                .order_by(col(EvaluationOutput.index))
            ).all()
        return [str(r[0]) for r in rows], [str(r[1]) for r in rows]

    def model_finished(self, model: str, metrics: dict[str, float]) -> None:
        """Record ``model``'s metrics and a ``model_finished`` event."""
        self.metrics[model] = metrics
        with self.session() as session:
            fence(session, self.evaluation.id, self.runner, metrics=dict(self.metrics))
            add_event(
                session,
                self.evaluation,
                "model_finished",
                f"{model}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                model=model,
                metrics=metrics,
            )
            session.commit()

    def succeed(self) -> None:
        """Every model scored: the evaluation succeeded."""
        with self.session() as session:
            fence(
                session,
                self.evaluation.id,
                self.runner,
                state=EvaluationState.SUCCEEDED.value,
                finished_at=utcnow(),
            )
            add_event(
                session,
                self.evaluation,
                "succeeded",
                f"{self.evaluation.samples} samples x {len(self.evaluation.models)} models scored",
                metrics=self.metrics,
            )
            session.commit()

    def fail(self, error: AppError) -> bool:
        """Record the failure; False when the evaluation was no longer ours to fail."""
        with self.session() as session:
            try:
                fence(
                    session,
                    self.evaluation.id,
                    self.runner,
                    state=EvaluationState.FAILED.value,
                    finished_at=utcnow(),
                    error_code=error.code,
                    error_message=error.message,
                    error_param=error.param,
                )
            except ClaimLost:
                return False
            add_event(
                session,
                self.evaluation,
                "failed",
                f"{error.code}: {error.message}",
                error=error.to_dict(),
            )
            session.commit()
        return True
