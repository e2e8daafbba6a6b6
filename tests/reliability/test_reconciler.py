"""The queue reconciler's choices, on a real store: which queued jobs it publishes again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from core.db import make_engine, upgrade
from core.jobs import JobState
from core.models import Dataset, Job, utcnow
from worker.reaper import StoreWatch, republish_lost_jobs


def _store(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    return make_engine(url)


def _job(session: Session, dataset: str, *, age_s: float, enqueued_s: float | None) -> str:
    now = utcnow()
    job = Job(
        tenant_id="t",
        state=JobState.QUEUED.value,
        model="m",
        method="lora",
        training_dataset_id=dataset,
        created_at=now - timedelta(seconds=age_s),
        enqueued_at=None if enqueued_s is None else now - timedelta(seconds=enqueued_s),
    )
    session.add(job)
    session.commit()
    return job.id


def test_queued_jobs_no_message_covers_are_published_again(tmp_path: Path) -> None:
    with Session(_store(tmp_path), expire_on_commit=False) as session:
        dataset = Dataset(tenant_id="t", filename="d", path="/d", bytes=1, sha256="0" * 64)
        session.add(dataset)
        session.commit()
        never = _job(session, dataset.id, age_s=120, enqueued_s=None)  # API died before publish
        lost = _job(session, dataset.id, age_s=120, enqueued_s=90)  # broker lost the message
        waiting = _job(session, dataset.id, age_s=120, enqueued_s=90)  # still in the broker
        young = _job(session, dataset.id, age_s=5, enqueued_s=None)  # publish may be on its way
        sent: list[str] = []
        published = republish_lost_jobs(
            session, grace_s=60, covered=lambda: {waiting}, enqueue=sent.append
        )
        assert published == sent and sorted(published) == sorted([never, lost])
        assert session.get(Job, never).enqueued_at is not None  # type: ignore[union-attr]
        # a broker that cannot be read (the durable embedded one): only never-published jobs
        sent.clear()
        stale = _job(session, dataset.id, age_s=120, enqueued_s=None)
        assert republish_lost_jobs(
            session, grace_s=60, covered=lambda: None, enqueue=sent.append
        ) == [stale]
        assert young not in sent


def test_heartbeats_count_as_missed_only_while_the_reaper_sees_the_store() -> None:
    watch = StoreWatch(gap_s=60)
    watch.saw_store(1000.0)
    watch.saw_store(1040.0)
    assert watch.watched_for(1040.0) == 40.0
    watch.saw_store(1200.0)  # a gap longer than the timeout: the reaper was not watching
    assert watch.watched_for(1200.0) == 0.0
    watch.lost_store()
    assert watch.watched_for(1300.0) == 0.0
