"""Watch one trainer process: record its events, heartbeat, cancel, disk limit, store outages.

A store that cannot be reached is retried with backoff (:class:`worker.store_retry.StoreRetry`)
while the trainer goes on: its events wait in ``events.jsonl`` and are stored, exactly once,
when the store answers again (the stored offset is read back after every failed write). Only
past ``store_outage_limit_s`` is the trainer stopped. Every write is fenced by the attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from core.jobs import JobState
from core.models import Job, utcnow
from core.settings import Settings
from trainer.checkpoints import directory_bytes
from trainer.contract.events import CheckpointEvent, StatusEvent, parse_event
from trainer.contract.layout import JobDir
from worker import storage_quota
from worker.events_tail import EventTail
from worker.launcher import TrainerProcess
from worker.recorder import record_events
from worker.store_retry import StoreRetry

logger = logging.getLogger(__name__)
# a paused job still beats until its trainer has stopped and the worker has given it up
ACTIVE = (JobState.RUNNING.value, JobState.CANCELLING.value, JobState.PAUSED.value)
LOST = "lost_ownership"
STORE_LOST = "store_unavailable"
EXIT_FENCED = 3  # trainer.finetune: the job directory belongs to another attempt
DISK_CHECK_S = 10.0


@dataclass(frozen=True)
class Outcome:
    state: JobState
    code: str | None = None
    message: str | None = None
    user_error: bool | None = None


class LostJobError(Exception):
    """The job moved on to another attempt while events were being recorded."""


def store_failed(session: Session, job: Job, store: StoreRetry, exc: SQLAlchemyError) -> None:
    """Roll the session back (it is unusable until then) and schedule the next try."""
    try:
        session.rollback()
    except SQLAlchemyError:
        logger.debug("rollback failed too", exc_info=True)
    store.failed()
    logger.warning(
        "job %s: the store failed (%s); the trainer goes on, retrying in %.1f s "
        "(down for %.0f s of at most %.0f s)",
        job.id,
        type(exc).__name__,
        store.wait_s(),
        store.down_for(),
        store.limit_s,
    )


def heartbeat(session: Session, job: Job, node: str) -> bool:
    """Prove ``node`` alive on ``job``; False when the job is no longer this attempt's."""
    result = session.execute(
        update(Job)
        .where(
            col(Job.id) == job.id,
            col(Job.worker) == node,
            col(Job.attempt) == job.attempt,
            col(Job.state).in_(ACTIVE),
        )
        .values(heartbeat_at=utcnow())
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class Supervisor:
    """Supervises one attempt's trainer for the runner."""

    settings: Settings
    node: str
    poll_s: float
    session: Session
    job: Job
    directory: JobDir
    _saved: bool = False  # a checkpoint was recorded since the last disk check

    def watch(self, process: TrainerProcess, tail: EventTail) -> Outcome:
        """Supervise ``process`` until it ends (or must be stopped); its :class:`Outcome`."""
        session, job = self.session, self.job
        store = StoreRetry(limit_s=self.settings.store_outage_limit_s)
        last_beat = last_disk = 0.0
        status: StatusEvent | None = None
        stopped: JobState | None = None
        returncode = None
        while returncode is None:
            returncode = process.wait(self.poll_s)
            process.processes()  # remember the ranks, should torchrun die first
            if not store.due():
                continue
            try:
                self._resync(tail, store)
                status = self._record(tail) or status
                if status is not None and status.code == storage_quota.CODE:
                    return self._over_quota(process, status)
                if time.monotonic() - last_beat >= self.settings.heartbeat_interval_s:
                    last_beat = time.monotonic()
                    if not heartbeat(session, job, self.node):
                        logger.warning("job %s: no longer owned by %s; stopping", job.id, self.node)
                        process.terminate()
                        return Outcome(JobState.FAILED, LOST)
                stop = self._stop_requested(session, job.id) if returncode is None else None
                if stop is not None:
                    logger.info("job %s: %s; stopping the trainer", job.id, stop.value)
                    returncode = process.terminate()
                    stopped = stop
                store.succeeded()
            except LostJobError:
                process.terminate()
                return Outcome(JobState.FAILED, LOST)
            except SQLAlchemyError as exc:
                store_failed(session, job, store, exc)
                if store.given_up():
                    process.terminate()
                    return Outcome(JobState.FAILED, STORE_LOST)
                continue
            disk_due = time.monotonic() - last_disk >= DISK_CHECK_S or self._saved
            if returncode is None and disk_due:
                last_disk, self._saved = time.monotonic(), False
                over = self._over_disk_limit()
                if over is not None:
                    logger.warning("job %s: %s; stopping the trainer", job.id, over.message)
                    process.terminate()
                    try:
                        self._record_final(tail, store)  # what it wrote up to the stop
                    except LostJobError:
                        return Outcome(JobState.FAILED, LOST)
                    return over
        try:
            stored, final = self._record_final(tail, store)
        except LostJobError:
            return Outcome(JobState.FAILED, LOST)
        if not stored:
            return Outcome(JobState.FAILED, STORE_LOST)
        status = final or status
        if status is not None and status.code == storage_quota.CODE:
            return self._over_quota(process, status)
        if stopped is not None:
            return Outcome(stopped)
        if returncode == EXIT_FENCED:
            return self._fenced()
        if returncode == 0 and status is not None and status.status == "succeeded":
            return Outcome(JobState.SUCCEEDED)
        return Outcome(
            JobState.FAILED,
            (status and status.code) or "trainer_crashed",
            (status and status.message) or f"trainer exited with code {returncode}",
            bool(status and status.user_error),
        )

    def _record(self, tail: EventTail) -> StatusEvent | None:
        """Store what the trainer wrote since the last call; its last ``status``, if any."""
        session, job = self.session, self.job
        start = tail.offset
        events = [parse_event(raw) for raw in tail.read_new()]
        if not events:
            return None
        try:
            events, over_quota = storage_quota.split_at_quota(session, self.settings, job, events)
            owned = record_events(session, job, events, offset=tail.offset)
        except BaseException:
            tail.seek(start)  # not stored: read them again next time
            raise
        if not owned:
            tail.seek(start)
            raise LostJobError
        self._saved = self._saved or any(isinstance(e, CheckpointEvent) for e in events)
        statuses = [e for e in events if isinstance(e, StatusEvent)]
        return over_quota or (statuses[-1] if statuses else None)

    def _over_quota(self, process: TrainerProcess, status: StatusEvent) -> Outcome:
        """A checkpoint past the tenant's storage quota: stop the trainer before it writes
        more, remove that checkpoint and any newer one, and fail the job."""
        process.terminate()
        storage_quota.discard_from(self.directory, status.step or 0)
        return Outcome(JobState.FAILED, storage_quota.CODE, status.message, True)

    def _record_final(self, tail: EventTail, store: StoreRetry) -> tuple[bool, StatusEvent | None]:
        """Store what the trainer wrote last once the store answers: (True, its last status if
        it wrote one), or (False, None) when the store stayed away past the limit."""
        session, job = self.session, self.job
        while True:
            try:
                self._resync(tail, store)
                return True, self._record(tail)
            except SQLAlchemyError as exc:
                store_failed(session, job, store, exc)
                if store.given_up():
                    return False, None
                time.sleep(store.wait_s())

    def _resync(self, tail: EventTail, store: StoreRetry) -> None:
        """After a failed write the commit may or may not have happened: read from where the
        store says the recording got to."""
        if store.needs_resync:
            query = select(Job.events_offset).where(Job.id == self.job.id)
            stored = self.session.exec(query).one()
            tail.seek(int(stored))
            store.needs_resync = False

    def _stop_requested(self, session: Session, job_id: str) -> JobState | None:
        """``cancelled`` or ``paused`` when the job asks its trainer to stop, else None."""
        job = session.get(Job, job_id, populate_existing=True)
        if job is None:
            return None
        if job.cancel_requested or job.state == JobState.CANCELLING:
            return JobState.CANCELLED
        return JobState.PAUSED if job.state == JobState.PAUSED else None

    def _over_disk_limit(self) -> Outcome | None:
        limit = self.settings.limits.max_job_disk_bytes
        used = directory_bytes(self.directory.root)
        if used <= limit:
            return None
        return Outcome(
            JobState.FAILED,
            "disk_limit_exceeded",
            f"the job directory holds {used} bytes, over the limit of {limit} "
            "(GLMFT_LIMITS__MAX_JOB_DISK_BYTES); its checkpoints are kept: lower "
            "save_total_limit or raise save_steps, then resume",
            True,
        )

    def _fenced(self) -> Outcome:
        """The trainer refused to run: another attempt's trainer holds the job directory."""
        if not heartbeat(self.session, self.job, self.node):
            return Outcome(JobState.FAILED, LOST)
        return Outcome(
            JobState.FAILED,
            "job_dir_busy",
            f"another trainer still held {self.directory.root} after "
            f"{self.settings.heartbeat_timeout_s:.0f} s; resume the job once it has stopped",
            False,
        )
