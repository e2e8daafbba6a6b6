"""The job state machine: one table of allowed edges and one ``transition()`` that applies them.

``queued -> running -> succeeded | failed | cancelled`` plus ``cancelling`` and ``paused``
(ARCHITECTURE.md decision 2). A job is validated whole before it is stored (``POST /jobs`` refuses
what would not run), so it starts ``queued``. Every change is a conditional UPDATE on the current
state, so two workers (or a worker and the reaper) can never both move a job, and every change is
recorded as a job event named after the state entered, in the same transaction as the change
itself; a change into ``queued``, ``running`` or a final state adds its ``job.<state>`` webhook
deliveries to that transaction too.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from core.errors import InvalidJobTransition, JobNotFound
from core.models import Adapter, Checkpoint, Job, JobEvent, utcnow
from core.webhooks import enqueue_job_state


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobState
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # queued -> paused: held back until resumed (its broker message is then skipped)
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED, S.PAUSED}),
    # running -> queued: the reaper re-queues a job whose worker vanished
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING, S.QUEUED, S.PAUSED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    # resume: a finished-but-not-succeeded job may run again from a checkpoint
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.SUCCEEDED: frozenset(),
}
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
#: Columns a state event repeats in its ``data`` when the transition sets them.
_EVENT_FIELDS = (
    "attempt",
    "worker",
    "gpu_ids",
    "resume_from_step",
    "error_code",
    "error_message",
    "user_error",
    "adapter_id",
)
_RACE_RETRIES = 3


def sources_of(target: JobState) -> list[JobState]:
    return [s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets]


def state_event(
    job_id: str, target: JobState, previous: str | None, reason: str = "", **data: Any
) -> JobEvent:
    """The event recording that ``job_id`` entered ``target`` (kind: the state's name)."""
    message = f"{previous} -> {target.value}" if previous else target.value
    return JobEvent(
        job_id=job_id,
        kind=target.value,
        message=f"{message}: {reason}" if reason else message,
        data={"state": target.value, "previous": previous, "reason": reason or None, **data},
        created_at=utcnow(),  # given: the model's default factory costs a signature inspection
    )


def transition(
    session: Session,
    job_id: str,
    target: JobState,
    *,
    from_states: Iterable[JobState] | None = None,
    at_attempt: int | None = None,
    reason: str = "",
    **fields: Any,
) -> Job:
    """Move ``job_id`` to ``target`` if its current state allows it; set ``fields`` with it.

    ``from_states`` narrows the allowed sources further (e.g. only ``queued`` for a claim);
    ``at_attempt`` fences the change to that attempt of the job, so a worker that lost its job to
    a newer attempt cannot move it. The change and its event (``reason`` says why) are committed
    together. Raises ``JobNotFound`` or ``InvalidJobTransition``.
    """
    allowed = {s.value for s in sources_of(target)}
    if from_states is not None:
        allowed &= {s.value for s in from_states}
    values: dict[str, Any] = {"state": target.value, **fields}
    if target in TERMINAL:
        values.setdefault("finished_at", utcnow())
    data = {k: fields[k] for k in _EVENT_FIELDS if fields.get(k) is not None}
    moved = False
    for _ in range(_RACE_RETRIES):
        row = session.exec(select(Job.state, Job.attempt).where(col(Job.id) == job_id)).first()
        if row is None or row[0] not in allowed:
            break
        if at_attempt is not None and row[1] != at_attempt:
            break  # the job moved on to another attempt: not this caller's to change
        current = row[0]
        # conditional on the state (and attempt) just read: the event names the state it left
        statement = update(Job).where(col(Job.id) == job_id, col(Job.state) == current)
        if at_attempt is not None:
            statement = statement.where(col(Job.attempt) == at_attempt)
        result = session.execute(statement.values(**values))
        moved = result.rowcount == 1  # type: ignore[attr-defined]
        if moved:
            session.add(state_event(job_id, target, current, reason, **data))
            enqueue_job_state(session, job_id, target.value)
        session.commit()  # when not moved, another writer changed it since our read: look again
        if moved:
            break
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(f"job {job_id} not found")
    if not moved:
        raise InvalidJobTransition(
            f"job {job_id} is {job.state}; it cannot become {target.value}"
            + (f" at attempt {at_attempt} (it is on {job.attempt})" if at_attempt else ""),
            details={"state": job.state, "target": target.value},
        )
    return job


def claim(
    session: Session, job_id: str, *, worker: str, gpu_ids: list[int], now: datetime | None = None
) -> Job | None:
    """Take a queued job for ``worker``; ``None`` when another delivery already owns it."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} not found")
    try:
        return transition(
            session,
            job_id,
            S.RUNNING,
            from_states=[S.QUEUED],
            worker=worker,
            gpu_ids=gpu_ids,
            attempt=job.attempt + 1,
            heartbeat_at=now or utcnow(),
            started_at=now or utcnow(),
            cancel_requested=False,
            reason=f"attempt {job.attempt + 1} on {worker}",
        )
    except InvalidJobTransition:
        return None


PROMOTED = ":ckpt-"  # ``<job adapter id>:ckpt-<step>``: a checkpoint promoted by hand


def adapter_id(job: Job, step: int | None = None) -> str:
    """The adapter id of a job, ``ft:<base>:<suffix|method>:<job>``, which the job registers
    when it succeeds; with ``step``, that of its checkpoint promoted by hand."""
    name = f"ft:{job.model}:{job.suffix or job.method}:{job.id}"
    return name if step is None else f"{name}{PROMOTED}{step}"


def save_adapter(session: Session, job: Job, checkpoint: Checkpoint, name: str) -> Adapter:
    """The adapter ``name`` serving ``checkpoint`` of ``job``, created or pointed at it."""
    adapter = session.get(Adapter, name) or Adapter(
        id=name,
        tenant_id=job.tenant_id,
        job_id=job.id,
        base_model=job.model,
        method=job.method,
        path=checkpoint.path,
    )
    adapter.step, adapter.path = checkpoint.step, checkpoint.path
    session.add(adapter)
    session.commit()
    session.refresh(adapter)
    return adapter
