"""Cancel, pause and resume: state changes through ``core.jobs.transition`` (conditional UPDATE)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlmodel import Session, col, select

from api.queue import Enqueuer
from api.schemas.common import as_utc
from api.services.jobs import enter_queue, publish, usable_dataset
from core.errors import Invalid, InvalidJobTransition, JobStillStopping, Unavailable
from core.jobs import TERMINAL, JobState, transition
from core.models import Checkpoint, Job, utcnow
from core.settings import Settings

logger = logging.getLogger(__name__)
S = JobState
RESUMABLE = (S.FAILED, S.CANCELLED, S.PAUSED)
_RACE_RETRIES = 3


def _cancel_once(session: Session, job: Job) -> Job:
    state = JobState(job.state)
    if state is S.CANCELLING:
        return job
    if state in TERMINAL:
        raise InvalidJobTransition(
            f"job {job.id} is {state.value}; only an unfinished job can be cancelled",
            details={"state": state.value, "target": S.CANCELLED.value},
        )
    if state is S.RUNNING:  # the worker sees the flag and stops the process group
        return transition(
            session,
            job.id,
            S.CANCELLING,
            from_states=[S.RUNNING],
            cancel_requested=True,
            reason="cancel requested; the worker stops the trainer",
        )
    return transition(
        session,
        job.id,
        S.CANCELLED,
        from_states=[state],
        cancel_requested=True,
        reason="cancel requested",
    )


def _retrying(action: Callable[[Session, Job], Job], session: Session, job: Job) -> Job:
    """``action`` again on the job's new state when a worker moved it under our feet."""
    for _ in range(_RACE_RETRIES):
        seen = job.state  # before the attempt: a failed transition refreshes ``job`` in place
        try:
            return action(session, job)
        except InvalidJobTransition:
            refreshed = session.get(Job, job.id, populate_existing=True)
            if refreshed is None or refreshed.state == seen:
                raise
            job = refreshed
    return action(session, job)


def cancel_job(*, session: Session, job: Job) -> Job:
    """queued/paused → cancelled; running → cancelling; finished → 409.

    A worker may claim the job between our read and our UPDATE: then retry on the new state.
    """
    return _retrying(_cancel_once, session, job)


def _pause_once(session: Session, job: Job) -> Job:
    state = JobState(job.state)
    if state is S.PAUSED:
        return job
    if state not in (S.QUEUED, S.RUNNING):
        raise InvalidJobTransition(
            f"job {job.id} is {state.value}; only a queued or running job can be paused",
            details={"state": state.value, "target": S.PAUSED.value},
        )
    why = "pause requested" + ("; the worker stops the trainer" if state is S.RUNNING else "")
    return transition(session, job.id, S.PAUSED, from_states=[state], reason=why)


def pause_job(*, session: Session, job: Job) -> Job:
    """queued → paused (held back); running → paused: its worker stops the trainer, keeping
    the checkpoints, and gives the job up; ``resume`` queues it from the newest checkpoint."""
    return _retrying(_pause_once, session, job)


def _still_stopping(job: Job, settings: Settings) -> bool:
    """A paused job whose worker has not given it up yet (and is alive: it beats)."""
    if job.state != S.PAUSED.value or job.worker is None or job.heartbeat_at is None:
        return False
    since = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    return as_utc(job.heartbeat_at) >= since


def _checkpoint_step(session: Session, job: Job, step: int | None) -> int | None:
    steps = select(Checkpoint.step).where(Checkpoint.job_id == job.id)
    if step is None:  # the newest recorded checkpoint, or a fresh start when there is none
        return session.exec(steps.order_by(col(Checkpoint.step).desc())).first()
    if session.exec(steps.where(Checkpoint.step == step)).first() is None:
        known = list(session.exec(steps.order_by(col(Checkpoint.step))).all())
        raise Invalid(
            f"job {job.id} has no checkpoint at step {step} (recorded: {known or 'none'})",
            param="checkpoint_step",
            details={"steps": known},
        )
    return step


def resume_job(
    *, session: Session, settings: Settings, enqueuer: Enqueuer, job: Job, step: int | None
) -> Job:
    """failed/cancelled/paused → queued with ``resume_from_step``, then enqueue.

    The resume gets a fresh attempt budget. If the broker refuses the message the job goes
    back to ``failed`` (``enqueue_failed``) and ``Unavailable`` is raised.
    """
    if job.state not in RESUMABLE:
        raise InvalidJobTransition(
            f"job {job.id} is {job.state}; only a failed, cancelled or paused job can resume",
            details={"state": job.state, "target": S.QUEUED.value},
        )
    if _still_stopping(job, settings):
        raise JobStillStopping(
            f"job {job.id} is paused but its trainer on {job.worker} is still stopping; "
            "resume it again in a few seconds",
            details={"state": job.state, "worker": job.worker},
        )
    resume_from = _checkpoint_step(session, job, step)
    usable_dataset(session, job.tenant_id, job.training_dataset_id, "training_dataset")
    if job.validation_dataset_id:
        usable_dataset(session, job.tenant_id, job.validation_dataset_id, "validation_dataset")
    enter_queue(session, settings, job.tenant_id, job.gpus)  # committed with the transition
    job = transition(
        session,
        job.id,
        S.QUEUED,
        from_states=RESUMABLE,
        resume_from_step=resume_from,
        cancel_requested=False,
        error_code=None,
        error_message=None,
        error_param=None,
        user_error=None,
        finished_at=None,
        max_attempts=job.attempt + settings.limits.max_attempts,
        worker=None,
        gpu_ids=[],
        reason="resumed from "
        + (f"checkpoint {resume_from}" if resume_from is not None else "the start"),
    )
    try:
        publish(session, enqueuer, job)
    except Exception as exc:  # any broker failure
        logger.exception("enqueue of resumed job %s failed", job.id)
        transition(
            session,
            job.id,
            S.FAILED,
            from_states=[S.QUEUED],
            error_code="enqueue_failed",
            error_message="the job queue was unavailable when the job was resumed",
            user_error=False,
            reason="the job queue was unavailable",
        )
        raise Unavailable("the job queue is unavailable; resume the job again later") from exc
    return job
