"""Evaluation states and the runner's fence.

``queued -> running -> succeeded | failed | cancelled``; ``running -> queued`` when the runner's
process stops (it hands the evaluation back) and ``queued | running -> cancelled`` on cancel.
A runner claims an evaluation with a conditional UPDATE that records its id and a heartbeat;
every write it makes afterwards goes through :func:`fence`, an UPDATE conditional on still being
the owner of a running evaluation, in the same transaction as the rows it stores. A cancel, or
another runner taking over an evaluation whose heartbeat went stale, makes that UPDATE match
nothing, and the old runner stops without having written anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, func, or_, update
from sqlmodel import Session, col, select

from core.errors import InvalidEvaluationTransition
from core.models import Evaluation, EvaluationEvent, utcnow


class EvaluationState(StrEnum):
    """An evaluation's state; see the module docstring for the edges."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({EvaluationState.SUCCEEDED, EvaluationState.FAILED, EvaluationState.CANCELLED})


class ClaimLost(Exception):  # noqa: N818 - a condition, not an error of the caller
    """The runner no longer owns the evaluation: it was cancelled or taken over."""


def add_event(
    session: Session, evaluation: Evaluation, kind: str, message: str, **data: Any
) -> None:
    """Add an event to the session (the caller commits it with what it describes)."""
    session.add(
        EvaluationEvent(
            evaluation_id=evaluation.id,
            tenant_id=evaluation.tenant_id,
            kind=kind,
            message=message,
            data=data,
        )
    )


def _claimable(stale_before: datetime) -> Any:
    return or_(
        col(Evaluation.state) == EvaluationState.QUEUED.value,
        and_(
            col(Evaluation.state) == EvaluationState.RUNNING.value,
            col(Evaluation.heartbeat_at) < stale_before,
        ),
    )


def claim_next(
    session: Session, runner: str, *, stale_after_s: float, now: datetime | None = None
) -> Evaluation | None:
    """Take the oldest queued evaluation, or a running one whose runner stopped beating for
    ``stale_after_s``, for ``runner``; ``None`` when there is none left to take."""
    now = now or utcnow()
    claimable = _claimable(now - timedelta(seconds=stale_after_s))
    candidates = session.exec(
        select(Evaluation.id)
        .where(claimable)
        .order_by(col(Evaluation.created_at), col(Evaluation.id))
        .limit(8)
    ).all()
    for evaluation_id in candidates:
        result = session.execute(
            update(Evaluation)
            .where(col(Evaluation.id) == evaluation_id, claimable)
            .values(
                state=EvaluationState.RUNNING.value,
                runner=runner,
                heartbeat_at=now,
                started_at=func.coalesce(col(Evaluation.started_at), now),
            )
        )
        session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return session.get(Evaluation, evaluation_id, populate_existing=True)
    return None


def fence(session: Session, evaluation_id: str, owner: str, **values: Any) -> None:
    """Beat the heartbeat (and set ``values``) if runner ``owner`` still owns the running
    evaluation, else raise :class:`ClaimLost`. The caller commits; until then the row stays
    locked, so a concurrent cancel waits for the rows written with it."""
    values.setdefault("heartbeat_at", utcnow())
    result = session.execute(
        update(Evaluation)
        .where(
            col(Evaluation.id) == evaluation_id,
            col(Evaluation.runner) == owner,
            col(Evaluation.state) == EvaluationState.RUNNING.value,
        )
        .values(**values)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise ClaimLost(evaluation_id)


def release(session: Session, evaluation: Evaluation, runner: str) -> bool:
    """Hand a running evaluation back to the queue (its runner's process is stopping)."""
    try:
        fence(session, evaluation.id, runner, state=EvaluationState.QUEUED.value, runner=None)
    except ClaimLost:
        return False
    add_event(
        session,
        evaluation,
        "interrupted",
        "the serving process stopped; the evaluation goes on where it was when a runner "
        "takes it again",
    )
    session.commit()
    return True


def cancel(session: Session, evaluation: Evaluation) -> Evaluation:
    """Cancel a queued or running evaluation at once (its runner notices at its next write);
    ``InvalidEvaluationTransition`` once it is finished. Commits."""
    active = [EvaluationState.QUEUED.value, EvaluationState.RUNNING.value]
    result = session.execute(
        update(Evaluation)
        .where(col(Evaluation.id) == evaluation.id, col(Evaluation.state).in_(active))
        .values(state=EvaluationState.CANCELLED.value, finished_at=utcnow(), runner=None)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = session.get(Evaluation, evaluation.id, populate_existing=True)
        state = current.state if current else "gone"
        raise InvalidEvaluationTransition(
            f"evaluation {evaluation.id} is {state}; only a queued or running one can be cancelled",
            details={"state": state},
        )
    add_event(session, evaluation, "cancelled", "cancelled by the caller")
    session.commit()
    session.refresh(evaluation)
    return evaluation
