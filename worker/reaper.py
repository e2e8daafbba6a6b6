"""Keep the queue true to SQL: recover jobs whose worker vanished, publish lost messages.

**Stale jobs.** A running job whose heartbeat is older than ``heartbeat_timeout_s`` goes back
to ``queued`` and is published again while it has attempts left; its next attempt resumes from
the newest complete checkpoint. A job out of attempts fails with ``worker_lost``; a job that was
being cancelled is cancelled. A heartbeat only counts as missed while the reaper could see the
store (:class:`StoreWatch`): after an outage every worker gets a full timeout to write one.

**Lost messages.** A queued job whose last publish (``enqueued_at``) is older than
``publish_grace_s``, or that was never known to be published (an API killed between commit and
publish), and that no message in the broker covers (a broker restarted without persistence) is
published again. A redelivery is harmless: the claim is a conditional UPDATE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from core.errors import InvalidJobTransition
from core.jobs import JobState, transition
from core.models import Job, utcnow

logger = logging.getLogger(__name__)


@dataclass
class StoreWatch:
    """Since when the reaper has seen the store without a gap longer than ``gap_s``."""

    gap_s: float
    _since: float | None = None
    _last: float | None = None

    def saw_store(self, now: float) -> None:
        if self._last is None or now - self._last > self.gap_s:
            self._since = now
        self._last = now

    def lost_store(self) -> None:
        self._since = self._last = None

    def watched_for(self, now: float) -> float:
        return 0.0 if self._since is None else now - self._since


def reap_stale_jobs(
    session: Session,
    *,
    timeout_s: float,
    enqueue: Callable[[str], None],
    now: datetime | None = None,
) -> list[str]:
    """Handle every stale job; returns the ids re-queued."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=timeout_s)
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
                    at_attempt=job.attempt,
                    reason=f"worker {job.worker} stopped responding while cancelling",
                )
            elif job.attempt < job.max_attempts:
                transition(
                    session,
                    job.id,
                    JobState.QUEUED,
                    from_states=[JobState.RUNNING],
                    at_attempt=job.attempt,
                    worker=None,
                    gpu_ids=[],
                    reason=f"worker {job.worker} lost; re-queued (attempt {job.attempt} of "
                    f"{job.max_attempts})",
                )
                _publish(session, job.id, enqueue)
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
                    at_attempt=job.attempt,
                    error_code="worker_lost",
                    error_message=f"worker {job.worker} stopped responding on attempt "
                    f"{job.attempt} of {job.max_attempts}",
                    user_error=False,
                    reason=f"worker {job.worker} lost on the last attempt",
                )
        except InvalidJobTransition:
            continue  # it moved on while we looked
    return requeued


def republish_lost_jobs(
    session: Session,
    *,
    grace_s: float,
    covered: Callable[[], set[str] | None],
    enqueue: Callable[[str], None],
    now: datetime | None = None,
) -> list[str]:
    """Publish again every queued job older than ``grace_s`` that no message covers.

    ``covered()`` gives the job ids the broker's messages name, or None when the broker cannot
    be read: then only jobs never known to be published are published. Returns their ids.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=grace_s)
    enqueued = col(Job.enqueued_at)
    candidates = session.exec(
        select(Job)
        .where(
            Job.state == JobState.QUEUED.value,
            or_(
                and_(enqueued.is_(None), col(Job.created_at) < cutoff),
                enqueued < cutoff,
            ),
        )
        .order_by(col(Job.created_at))
    ).all()
    if not candidates:
        return []
    pending = covered()
    published = []
    for job in candidates:
        if pending is not None and job.id in pending:
            continue
        if pending is None and job.enqueued_at is not None:
            continue  # a durable broker took it: trust it
        _publish(session, job.id, enqueue)
        published.append(job.id)
    if published:
        logger.warning(
            "re-published %d queued job(s) no message covered: %s", len(published), published
        )
    return published


def _publish(session: Session, job_id: str, enqueue: Callable[[str], None]) -> None:
    enqueue(job_id)
    session.execute(
        update(Job)
        .where(col(Job.id) == job_id, col(Job.state) == JobState.QUEUED.value)
        .values(enqueued_at=utcnow())
    )
    session.commit()
