"""Queue positions from a per-process snapshot of a tenant's queue: the same numbers as the SQL
count, as of at most ``max_age_s`` ago, and counted in SQL past the part of the queue read."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from api.queue_positions import QueuePositions
from api.services.job_queries import queue_position
from core.models import Dataset, Job, utcnow


def _queue(engine: Engine, tenant: str = "team-q") -> list[Job]:
    """Nine queued jobs over three priorities, two of them created at the same instant, plus
    a running one and another tenant's queued one (neither counts)."""
    start = utcnow() - timedelta(minutes=5)
    with Session(engine, expire_on_commit=False) as session:
        dataset = Dataset(tenant_id=tenant, filename="t.jsonl", path="/x", bytes=1, sha256="0")
        session.add(dataset)
        session.commit()

        def job(priority: int, minute: int, state: str = "queued", owner: str = tenant) -> Job:
            return Job(
                tenant_id=owner,
                state=state,
                model="m",
                method="lora",
                training_dataset_id=dataset.id,
                priority=priority,
                created_at=start + timedelta(minutes=minute),
            )

        queued = [job(p, m) for p, m in [(0, 0), (5, 1), (0, 2), (-1, 3), (5, 4), (0, 5)]]
        queued += [job(0, 6), job(0, 6), job(5, 7)]  # a tie on created_at: ordered by id
        session.add_all([*queued, job(9, 0, state="running"), job(9, 0, owner="team-other")])
        session.commit()
    return queued


def _counted(engine: Engine, jobs: list[Job]) -> list[int | None]:
    with Session(engine) as session:
        return [queue_position(session, job) for job in jobs]


def test_snapshot_positions_equal_the_sql_count(engine: Engine) -> None:
    jobs = _queue(engine)
    positions = QueuePositions(max_age_s=60)
    with Session(engine) as session:
        found = [positions.position(session, job) for job in jobs]
    assert found == _counted(engine, jobs)
    assert sorted(p for p in found if p is not None) == list(range(len(jobs)))


def test_positions_are_as_of_at_most_max_age(engine: Engine) -> None:
    jobs = _queue(engine)
    last = max(jobs, key=lambda j: (-j.priority, j.created_at, j.id))
    positions = QueuePositions(max_age_s=1.0)
    with Session(engine) as session:
        assert positions.position(session, last) == len(jobs) - 1
        head = min(jobs, key=lambda j: (-j.priority, j.created_at, j.id))
        session.get_one(Job, head.id).state = "running"
        session.commit()
        assert positions.position(session, last) == len(jobs) - 1  # the snapshot's answer
        time.sleep(1.1)
        assert positions.position(session, last) == len(jobs) - 2


def test_a_job_past_the_part_of_the_queue_read_is_counted_in_sql(engine: Engine) -> None:
    jobs = _queue(engine)
    positions = QueuePositions(max_age_s=60, max_jobs=4)
    with Session(engine) as session:
        found = [positions.position(session, job) for job in jobs]
    assert found == _counted(engine, jobs)


def test_max_age_zero_counts_every_time(engine: Engine) -> None:
    jobs = _queue(engine)
    positions = QueuePositions(max_age_s=0)
    last = max(jobs, key=lambda j: (-j.priority, j.created_at, j.id))
    with Session(engine) as session:
        assert positions.position(session, last) == len(jobs) - 1
        session.get_one(Job, jobs[0].id).state = "cancelled"
        session.commit()
        assert positions.position(session, last) == len(jobs) - 2
