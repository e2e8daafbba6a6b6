"""Recover jobs whose worker vanished: no heartbeat for ``heartbeat_timeout_s``.

A job still under its attempt limit goes back to ``queued`` and is enqueued again; its next attempt
resumes from the newest complete checkpoint. A job out of attempts fails with ``worker_lost``; a job
that was being cancelled is cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from core.errors import InvalidJobTransition
from core.jobs import JobState, transition
from core.models import Job, utcnow

logger = logging.getLogger(__name__)


def reap_stale_jobs(
    session: Session,
    *,
    timeout_s: float,
    enqueue: Callable[[str], None],
    now: datetime | None = None,
) -> list[str]:
    """Handle every stale job; returns the ids re-queued."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    stale = session.exec(
        select(Job).where(
            col(Job.state).in_([JobState.RUNNING.value, JobState.CANCELLING.value]),
            col(Job.heartbeat_at) < cutoff,
        )
    ).all()
    requeued = []
    for job in stale:
        try:
            if job.state == JobState.CANCELLING:
                transition(
                    session,
                    job.id,
                    JobState.CANCELLED,
                    reason=f"worker {job.worker} stopped responding while cancelling",
                )
            elif job.attempt < job.max_attempts:
                transition(
                    session,
                    job.id,
                    JobState.QUEUED,
                    from_states=[JobState.RUNNING],
                    worker=None,
                    gpu_ids=[],
                    reason=f"worker {job.worker} lost; re-queued (attempt {job.attempt} of "
                    f"{job.max_attempts})",
                )
                enqueue(job.id)
                requeued.append(job.id)
                logger.warning(
                    "job %s: worker %s lost; re-queued (attempt %d of %d)",
                    job.id,
                    job.worker,
                    job.attempt,
                    job.max_attempts,
                )
            else:
                transition(
                    session,
                    job.id,
                    JobState.FAILED,
                    error_code="worker_lost",
                    error_message=f"worker {job.worker} stopped responding on attempt "
                    f"{job.attempt} of {job.max_attempts}",
                    user_error=False,
                    reason=f"worker {job.worker} lost on the last attempt",
                )
        except InvalidJobTransition:
            continue  # it moved on while we looked
    return requeued
