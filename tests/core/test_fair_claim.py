"""The fair claim (``core.scheduling``) on SQLite and PostgreSQL: tenants take turns whatever
their backlog, weights share job starts, priorities order a tenant's own queue, running and
GPU quotas keep jobs waiting, concurrent claimers never take one job twice, and a job whose row
another transaction holds is reported as such (its message is retried, not spent)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from core.jobs import JobState, transition
from core.models import Dataset, Job, utcnow
from core.scheduling import claim_next, join, waiting_job
from core.settings import QuotaSettings, Settings
from core.team_models import Tenant
from core.tenants import ensure_tenant
from worker.gpus import GpuLeases

_CLOCK = [utcnow()]


def settings(**quotas: int | None) -> Settings:
    return Settings(quotas=QuotaSettings(**quotas))


def submit(engine: Engine, tenant: str, *, gpus: int = 0, priority: int = 0) -> str:
    """A queued job, admitted as the API admits one (``join`` before the row is added)."""
    with Session(engine, expire_on_commit=False) as session:
        ensure_tenant(session, tenant)
        dataset = Dataset(tenant_id=tenant, filename="t.jsonl", path="/x", bytes=1, sha256="0")
        session.add(dataset)
        session.commit()
        join(session, tenant)
        _CLOCK[0] += timedelta(milliseconds=1)  # distinct creation times, in submission order
        job = Job(
            tenant_id=tenant,
            state="queued",
            model="glm-4-tiny",
            method="lora",
            training_dataset_id=dataset.id,
            gpus=gpus,
            priority=priority,
            created_at=_CLOCK[0],
        )
        session.add(job)
        session.commit()
        return job.id


def claim(engine: Engine, leases: GpuLeases, config: Settings | None = None) -> Job | None:
    with Session(engine, expire_on_commit=False) as session:
        return claim_next(session, config or settings(), worker="w", leases=leases).job


def finish(engine: Engine, job: Job, leases: GpuLeases) -> None:
    with Session(engine) as session:
        transition(session, job.id, JobState.SUCCEEDED)
    leases.release(job.id)


def test_a_tenant_with_one_job_is_not_starved_by_one_with_twenty(
    engine: Engine, tmp_path: Path
) -> None:
    leases = GpuLeases(tmp_path, [])
    big = [submit(engine, "big") for _ in range(20)]
    first = claim(engine, leases)
    assert first is not None and first.id == big[0]
    small = submit(engine, "small")
    finish(engine, first, leases)
    # the next start is the small tenant's, then the two take turns
    order = []
    for _ in range(4):
        job = claim(engine, leases)
        assert job is not None
        order.append(job.tenant_id)
        finish(engine, job, leases)
    assert order == ["small", "big", "big", "big"]
    with Session(engine) as session:
        started = session.get(Job, small)
        assert started is not None and started.state == "succeeded" and started.attempt == 1


def test_tenants_alternate_and_weights_share_the_starts(engine: Engine, tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [])
    with Session(engine) as session:
        ensure_tenant(session, "heavy").weight = 2.0
        session.commit()
    for _ in range(6):
        submit(engine, "heavy")
        submit(engine, "light")
    order = []
    for _ in range(6):
        job = claim(engine, leases)
        assert job is not None
        order.append(job.tenant_id)
        finish(engine, job, leases)
    assert order.count("heavy") == 4 and order.count("light") == 2, order


def test_priorities_order_a_tenants_own_queue(engine: Engine, tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [])
    low = submit(engine, "t", priority=-5)
    normal = submit(engine, "t")
    urgent = submit(engine, "t", priority=10)
    taken = []
    while (job := claim(engine, leases)) is not None:
        taken.append(job.id)
        finish(engine, job, leases)
    assert taken == [urgent, normal, low]


def test_running_and_gpu_quotas_keep_jobs_waiting(engine: Engine, tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [0, 1, 2, 3])
    capped = settings(max_running_jobs=1)
    a1, a2 = submit(engine, "a"), submit(engine, "a")
    first = claim(engine, leases, capped)
    assert first is not None and first.id == a1
    with Session(engine) as session:
        blocked = claim_next(session, capped, worker="w", leases=leases)
        assert blocked.job is None and blocked.reason == "quota"
        assert waiting_job(session, capped, "a") == a2  # the wake-up a finishing job publishes
        assert waiting_job(session, settings(), "a") is None  # no quota: nothing waited
    finish(engine, first, leases)
    second = claim(engine, leases, capped)
    assert second is not None and second.id == a2
    finish(engine, second, leases)
    # GPUs: the tenant may hold 2; a 2-GPU job waits while another holds 2, a 1-GPU job of
    # another tenant passes it
    gpu_capped = settings(max_gpus=2)
    g1, g2 = submit(engine, "g", gpus=2), submit(engine, "g", gpus=2)
    other = submit(engine, "o", gpus=1)
    started = [claim(engine, leases, gpu_capped) for _ in range(3)]
    assert [j.id if j else None for j in started] == [g1, other, None]
    assert sorted(len(j.gpu_ids) for j in started if j) == [1, 2]
    assert not set(started[0].gpu_ids) & set(started[1].gpu_ids)  # type: ignore[union-attr]
    finish(engine, started[0], leases)  # type: ignore[arg-type]
    last = claim(engine, leases, gpu_capped)
    assert last is not None and last.id == g2


def test_busy_node_reports_busy_and_an_impossible_job_is_left_to_others(
    engine: Engine, tmp_path: Path
) -> None:
    leases = GpuLeases(tmp_path, [0])
    submit(engine, "t", gpus=1)
    submit(engine, "t", gpus=1)
    assert claim(engine, leases) is not None
    with Session(engine) as session:
        assert claim_next(session, settings(), worker="w", leases=leases).reason == "busy"
    cpu_only = GpuLeases(tmp_path / "cpu", [])
    with Session(engine) as session:  # needs a GPU this node does not have: not claimable
        assert claim_next(session, settings(), worker="c", leases=cpu_only).reason == "empty"


def test_concurrent_claims_take_distinct_jobs_in_turns(engine: Engine, tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path, [])
    for _ in range(4):
        submit(engine, "a")
        submit(engine, "b")
    claimed: list[Job] = []
    lock = threading.Lock()

    def take() -> None:
        job = claim(engine, leases)
        with lock:
            claimed.extend([job] if job is not None else [])

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({j.id for j in claimed}) == len(claimed) == 6
    tenants = [j.tenant_id for j in claimed]
    assert sorted(tenants) == ["a", "a", "a", "b", "b", "b"]
    with Session(engine) as session:
        rows = {t: session.get(Tenant, t) for t in ("a", "b")}
        assert all(r is not None and r.virtual_time == 3.0 for r in rows.values())


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)  # SQLite has no row locks
def test_a_job_whose_row_another_transaction_holds_is_claimed_once_it_is_released(
    engine: Engine, tmp_path: Path
) -> None:
    # given a queued job whose row the API holds while it records the job's publish
    leases = GpuLeases(tmp_path, [])
    job_id = submit(engine, "t")
    holder = engine.connect()
    transaction = holder.begin()
    holder.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})
    try:
        # then a claim meanwhile says so (to be tried again), rather than finding nothing
        with Session(engine, expire_on_commit=False) as session:
            held = claim_next(session, settings(), worker="w", leases=leases)
        assert held.job is None and held.reason == "locked"
    finally:
        transaction.rollback()
        holder.close()
    # and once the row is released, the next claim takes the job
    job = claim(engine, leases)
    assert job is not None and job.id == job_id
