"""Run one training job: claim -> lease GPUs -> launch the trainer -> supervise -> record.

No Celery here (the task is a thin wrapper), so the whole path is testable with real processes.
The trainer runs in its own session and dies with this process; events are tailed into SQL every
``poll_s``; the heartbeat proves to the reaper that this worker is alive; cancel and pause stop the
whole process tree and keep the checkpoints (a paused job is then given up, for ``resume``).

The worker never loses track of its trainer. A store that cannot be reached is retried with
backoff while the trainer goes on (its events wait in ``events.jsonl``); only past
``store_outage_limit_s`` is the trainer stopped, and it is always stopped before the worker lets
go of the job. Every write is fenced by the job's attempt, and the trainer holds the job
directory's lock for its attempt (``trainer.fence``), so two trainers never run for one job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from core.datasets import archive_validation
from core.errors import InvalidJobTransition
from core.jobs import JobState, adapter_id, save_adapter, transition
from core.models import Adapter, Checkpoint, Dataset, Job
from core.scheduling import claim_next, waiting_job
from core.settings import Settings
from trainer.contract.command import Resume, TrainerArgs, TrainerCommand
from trainer.contract.layout import JobDir
from worker import jobdir
from worker.events_tail import EventTail
from worker.gpus import GpuLeases
from worker.launcher import TrainerProcess, compile_cache_env
from worker.store_retry import StoreRetry
from worker.supervisor import LOST, STORE_LOST, Outcome, Supervisor, heartbeat, store_failed

logger = logging.getLogger(__name__)


class NodeBusyError(RuntimeError):
    """The next job cannot start on this node yet (its GPUs are leased, or its row is held
    for a moment); the task retries after ``retry_s``."""

    def __init__(self, message: str, *, retry_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_s = retry_s


@dataclass
class Runner:
    settings: Settings
    engine: Engine
    leases: GpuLeases
    node: str
    poll_s: float = 1.0

    # publishes a wake-up message for a job id (the Celery task's ``send_task``)
    wake: Callable[[str], None] | None = None

    def run(self, job_id: str) -> str:
        """Run the queued job next in fair order (``core.scheduling``): the message's
        ``job_id`` only woke this worker up. Returns the final state, or ``"skipped"``."""
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            if job is not None and job.state == JobState.QUEUED and self._never_fits(session, job):
                return JobState.FAILED.value
            claim = claim_next(session, self.settings, worker=self.node, leases=self.leases)
            if claim.job is None:
                if claim.reason == "busy":
                    raise NodeBusyError(f"the next job's GPUs are not free on {self.node}")
                if claim.reason == "locked":
                    held = "the next job's row is held by another transaction"
                    raise NodeBusyError(held, retry_s=0.5)
                return "skipped"  # nothing this node can start, or every tenant at its quota
            claimed, gpus = claim.job, list(claim.job.gpu_ids)
            job_id, tenant = claimed.id, claimed.tenant_id
            # detached: a rollback after a failed write must not expire it, or reading
            # claimed.id would need the store that just failed
            session.expunge(claimed)
            try:
                logger.info(
                    "job %s: attempt %d on %s, GPUs %s", job_id, claimed.attempt, self.node, gpus
                )
                try:
                    outcome = self._attempt(session, claimed, gpus)
                except SQLAlchemyError:  # before a trainer ran: the reaper re-queues the job
                    logger.exception("job %s: the store failed before the trainer ran", job_id)
                    return "store_unavailable"
                except Exception as exc:  # never leave a claimed job running with no trainer
                    logger.exception("job %s: could not run the trainer", job_id)
                    outcome = Outcome(
                        JobState.FAILED, "worker_error", f"{type(exc).__name__}: {exc}", False
                    )
                if outcome.code == LOST:
                    return "lost"  # the reaper gave the job to another attempt: record nothing
                if outcome.code == STORE_LOST:
                    return "store_unavailable"  # trainer stopped; the reaper re-queues the job
                return self._finish(session, claimed, outcome)
            finally:
                self.leases.release(job_id)
                self._wake_waiting(session, tenant)

    def _wake_waiting(self, session: Session, tenant: str) -> None:
        """Publish a wake-up for the tenant's next waiting job: a claim that passed it over
        (quota, fair share) consumed the message that named it."""
        try:
            waiting = waiting_job(session, self.settings, tenant) if self.wake else None
            if waiting is not None and self.wake is not None:
                self.wake(waiting)
        except Exception:  # the queue reconciler publishes it later
            logger.exception("wake-up for tenant %s failed", tenant)

    def _never_fits(self, session: Session, job: Job) -> bool:
        """Fail a job asking for more GPUs than this node has (it could never run here)."""
        if job.gpus <= self.leases.capacity():
            return False
        transition(
            session,
            job.id,
            JobState.FAILED,
            from_states=[JobState.QUEUED],
            error_code="insufficient_capacity",
            error_message=f"job {job.id} asks for {job.gpus} GPUs but this node declares only "
            f"{self.leases.capacity()} ({self.leases.gpus})",
            user_error=False,
            reason=f"no worker like {self.node} can hold it",
        )
        return True

    def _attempt(self, session: Session, job: Job, gpus: list[int]) -> Outcome:
        model = self.settings.models.get(job.model)
        if model is None:
            return Outcome(
                JobState.FAILED,
                "model_unavailable",
                f"base model {job.model!r} is not configured on worker {self.node}",
                False,
            )
        directory = JobDir.for_job(self.settings.artifacts, job.id)
        train, validation = _dataset_paths(session, job)
        jobdir.prepare(
            directory,
            config=job.config,
            train_file=train,
            validation_file=validation,
            tree=train.parent if jobdir.is_archive_dataset(train) else None,
        )
        command = TrainerCommand(
            nproc=max(1, job.gpus),
            args=TrainerArgs(
                data_dir=directory.data,
                model_dir=model.path,
                config_path=directory.config,
                output_dir=directory.output,
                resume=_resume(session, job),
                base_model_name=job.model,
                feature_cache=self.settings.feature_cache,
                lock=directory.lock,
                attempt=job.attempt,
                lock_wait_s=self.settings.heartbeat_timeout_s,
                trust_remote_code=model.trust_remote_code,
            ),
        )
        # from where the last attempt's recording stopped: what a dead worker left unread is
        # stored now, and nothing twice
        tail = EventTail(directory.events, offset=job.events_offset)
        process = TrainerProcess(
            command.argv(),
            job_dir=directory.root,
            gpus=gpus,
            env=compile_cache_env(self.settings.compile_cache),
        )
        if gpus:  # the trainer's pid keeps the lease alive should this worker die first
            self.leases.attach(job.id, process.pid)
        supervisor = Supervisor(self.settings, self.node, self.poll_s, session, job, directory)
        try:
            return supervisor.watch(process, tail)
        finally:
            if process.poll() is None:  # whatever ended supervision, the trainer goes with it
                process.terminate()
                logger.warning("job %s: stopped the trainer before letting go", directory.root)

    def _finish(self, session: Session, job: Job, outcome: Outcome) -> str:
        store = StoreRetry(limit_s=self.settings.store_outage_limit_s)
        while True:
            try:
                return self._finish_once(session, job, outcome)
            except InvalidJobTransition:
                logger.warning("job %s: attempt %d no longer owns it", job.id, job.attempt)
                return "lost"
            except SQLAlchemyError as exc:
                store_failed(session, job, store, exc)
                if store.given_up():
                    return "store_unavailable"  # the reaper re-queues it; checkpoints stay
                time.sleep(store.wait_s())

    def _give_up_paused(self, session: Session, job_id: str) -> str:
        """The trainer of a paused job has stopped: release it, so that it may be resumed."""
        session.execute(
            update(Job)
            .where(col(Job.id) == job_id, col(Job.worker) == self.node)
            .where(col(Job.state) == JobState.PAUSED.value)
            .values(worker=None, gpu_ids=[])
        )
        session.commit()
        logger.info("job %s: paused; its trainer stopped", job_id)
        return JobState.PAUSED.value

    def _finish_once(self, session: Session, job: Job, outcome: Outcome) -> str:
        if outcome.state == JobState.PAUSED:
            return self._give_up_paused(session, job.id)
        fields: dict[str, Any] = {}
        if outcome.state == JobState.SUCCEEDED:
            if not heartbeat(session, job, self.node):
                raise InvalidJobTransition(f"job {job.id} moved on from attempt {job.attempt}")
            adapter = register_adapter(session, job)
            fields["adapter_id"] = adapter.id if adapter else None
        elif outcome.state == JobState.FAILED:
            fields.update(
                error_code=outcome.code,
                error_message=outcome.message,
                user_error=outcome.user_error,
            )
        try:
            transition(
                session,
                job.id,
                outcome.state,
                at_attempt=job.attempt,
                reason=_reason(outcome),
                **fields,
            )
        except InvalidJobTransition:
            current = session.get(Job, job.id, populate_existing=True)
            if current is None or current.attempt != job.attempt:
                raise  # another attempt owns the job: _finish records nothing
            if current.state == JobState.PAUSED:  # paused as the trainer ended: resume finishes it
                return self._give_up_paused(session, job.id)
            # e.g. a job paused, then cancelled while its trainer stopped: already decided
            logger.info("job %s: already %s; %s not recorded", job.id, current.state, outcome.state)
            return current.state
        logger.info("job %s: %s", job.id, outcome.state.value)
        return outcome.state.value


def _reason(outcome: Outcome) -> str:
    if outcome.state == JobState.FAILED:
        return f"{outcome.code}: {outcome.message}"
    if outcome.state == JobState.CANCELLED:
        return "the trainer was stopped"
    return "the trainer succeeded"


def register_adapter(session: Session, job: Job) -> Adapter | None:
    """Make the job's newest checkpoint an adapter, ``ft:<base>:<suffix>:<job>``."""
    newest = session.exec(
        select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(col(Checkpoint.step).desc())
    ).first()
    if newest is None:
        return None
    return save_adapter(session, job, newest, adapter_id(job))


def _dataset_paths(session: Session, job: Job) -> tuple[Path, Path | None]:
    train = session.get(Dataset, job.training_dataset_id)
    if train is None:
        raise LookupError(f"dataset {job.training_dataset_id} is gone")
    validation = (
        session.get(Dataset, job.validation_dataset_id) if job.validation_dataset_id else None
    )
    if validation is None:  # an archive carries its own dev split
        return Path(train.path), archive_validation(Path(train.path))
    return Path(train.path), Path(validation.path) if validation else None


def _resume(session: Session, job: Job) -> Resume:
    """A chosen step, else the newest complete checkpoint once the job has any."""
    if job.resume_from_step:
        return Resume.step(job.resume_from_step)
    has_checkpoint = session.exec(select(Checkpoint.id).where(Checkpoint.job_id == job.id)).first()
    return Resume.latest() if has_checkpoint is not None or job.attempt > 1 else Resume.none()
