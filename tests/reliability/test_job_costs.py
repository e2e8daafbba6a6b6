"""What one job may cost on disk: past ``limits.max_job_disk_bytes`` the worker stops it with a
clear error and keeps the checkpoints it has (a resume can go on from them)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session, select

from core.db import make_engine
from core.models import Checkpoint, Job
from tests.helpers import wait_for
from tests.reliability.services import RedisServer, queue_job, service_env, start_worker, stop
from trainer.checkpoints import is_complete

LIMIT = 1_500_000  # about three checkpoints of the tiny model's LoRA (430 kB each)


def test_a_job_over_its_disk_limit_is_stopped_and_keeps_its_checkpoints(
    database_url: str, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = service_env(
        home, database_url, redis_server.url(), tiny_model_dir, limits__max_job_disk_bytes=LIMIT
    )
    engine = make_engine(database_url)
    job_id = queue_job(engine, redis_server.url(), tmp_path, max_steps=400, save_every=20)
    worker = start_worker(env, tmp_path / "worker.log", beat=False)
    try:
        job = wait_for(lambda: _finished(engine, job_id), 180, "the job to be stopped")
    finally:
        stop(worker)
    assert (job.state, job.error_code, job.user_error) == ("failed", "disk_limit_exceeded", True)
    assert f"limit of {LIMIT}" in (job.error_message or "")
    assert 0 < job.step < 400  # stopped early
    with Session(engine) as session:
        rows = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    assert rows and all(is_complete(Path(c.path)) for c in rows)  # what it saved stays


def _finished(engine: object, job_id: str) -> Job | None:
    with Session(engine) as session:  # type: ignore[arg-type]
        job = session.get(Job, job_id)
    return job if job is not None and job.state in ("succeeded", "failed", "cancelled") else None
