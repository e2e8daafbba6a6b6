"""Queue positions counted in a per-process snapshot of each tenant's queue.

A job's position is the number of its tenant's queued jobs that start before it (higher
priority, or the same priority and older: ``api.services.job_queries.queue_position``). Counting
them in SQL on every ``GET /jobs/{id}`` and ``POST /jobs`` costs the database a walk over the
tenant's whole queue each time. Here each process reads a tenant's queue order (priority,
creation time, id) at most once per ``max_age_s`` and finds positions in it by bisection. A
position is then as of about ``max_age_s`` ago: jobs that started or entered the queue since
are not yet counted. A long queue is read less often (at least 100 times as long as reading it
took, so reading stays under 1% of the process's time), one thread at a time while the others
answer from the snapshot held. A queue longer than ``max_jobs`` is read up to there, and a job
beyond it is counted in SQL.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlmodel import Session, col

from api.schemas.common import as_utc
from api.services.job_queries import JobRecord, queue_position
from core.jobs import JobState
from core.models import Job

#: when the snapshots of this many tenants are held, those past their age are dropped
_PRUNE_AT = 256
#: a snapshot is kept at least this many times as long as reading it took, so that reading
#: queues takes at most 1% of a process's time however long they grow
READ_SHARE_INVERSE = 100

_Key = tuple[int, datetime, str]


def _key(priority: int, created_at: datetime, job_id: str) -> _Key:
    """Sorts in start order: higher priority first, then older, then by id."""
    return (-priority, as_utc(created_at), job_id)


@dataclass(frozen=True)
class _Snapshot:
    read_at: float
    keys: list[_Key]
    complete: bool  # the whole queue (else the first ``max_jobs`` of it)
    age_floor_s: float  # read again no sooner: a long queue is read less often


class QueuePositions:
    """Positions of queued jobs, from snapshots at most ``max_age_s`` old (0: counted in SQL
    on every call). Shared by a process's request threads."""

    def __init__(self, max_age_s: float, max_jobs: int = 10_000) -> None:
        self.max_age_s = max_age_s
        self.max_jobs = max_jobs
        self._snapshots: dict[str, _Snapshot] = {}
        self._reading = threading.Lock()  # one thread reads a queue again; the rest answer
        self._order = (
            select(col(Job.priority), col(Job.created_at), col(Job.id))
            .where(col(Job.tenant_id) == bindparam("tenant"))
            .where(col(Job.state) == JobState.QUEUED.value)
            .order_by(col(Job.priority).desc(), col(Job.created_at), col(Job.id))
            .limit(max_jobs + 1)
        )

    def position(self, session: Session, job: JobRecord) -> int | None:
        """How many of the tenant's queued jobs start before ``job``; None unless queued."""
        if job.state != JobState.QUEUED.value:
            return None
        if self.max_age_s <= 0:
            return queue_position(session, job)
        snapshot = self._snapshot(session, job.tenant_id)
        key = _key(job.priority, job.created_at, job.id)
        if not snapshot.complete and (not snapshot.keys or key > snapshot.keys[-1]):
            return queue_position(session, job)  # past the part of the queue read
        return bisect.bisect_left(snapshot.keys, key)

    def _snapshot(self, session: Session, tenant: str) -> _Snapshot:
        now = time.monotonic()
        held = self._snapshots.get(tenant)
        if held is not None and now - held.read_at <= max(self.max_age_s, held.age_floor_s):
            return held
        if held is not None and not self._reading.acquire(blocking=False):
            return held  # another thread is reading a queue: this answer may be a bit older
        try:
            snapshot = self._read(session, tenant, now)
        finally:
            if held is not None:
                self._reading.release()
        if len(self._snapshots) >= _PRUNE_AT:
            self._prune(now)
        self._snapshots[tenant] = snapshot
        return snapshot

    def _read(self, session: Session, tenant: str, now: float) -> _Snapshot:
        rows = session.connection().execute(self._order, {"tenant": tenant}).all()
        keys = [(-priority, created, job_id) for priority, created, job_id in rows[: self.max_jobs]]
        if keys and keys[0][1].tzinfo is None:  # SQLite hands timestamps back naive
            keys = [(negated, as_utc(created), job_id) for negated, created, job_id in keys]
        keys.sort()  # in Python's order (the database's collation may order ids otherwise)
        cost = time.monotonic() - now
        return _Snapshot(
            read_at=now,
            keys=keys,
            complete=len(rows) <= self.max_jobs,
            age_floor_s=cost * READ_SHARE_INVERSE,
        )

    def _prune(self, now: float) -> None:
        for tenant, snapshot in list(self._snapshots.items()):
            if now - snapshot.read_at > self.max_age_s:
                self._snapshots.pop(tenant, None)
