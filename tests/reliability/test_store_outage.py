"""PostgreSQL goes away for 15 s in the middle of a training: the worker keeps its trainer,
retries its writes, and the job succeeds once, with one trainer and no metric stored twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from core.db import make_engine
from core.models import Checkpoint, Job, JobEvent, Metric
from tests.helpers import wait_for
from tests.reliability.services import (
    PostgresCluster,
    RedisServer,
    queue_job,
    service_env,
    start_worker,
    stop,
    trainer_launches,
)
from trainer.fence import holders

MAX_STEPS, LOG_EVERY, SAVE_EVERY = 300, 10, 30
OUTAGE_S = 15


def recorded_step(engine: Engine, job_id: str) -> int:
    try:
        with Session(engine) as session:
            job = session.get(Job, job_id)
            return job.step if job is not None else 0
    except OperationalError:
        return 0


def test_a_store_outage_mid_training_runs_the_job_once(
    pg_cluster: PostgresCluster,
    database_url: str,
    redis_server: RedisServer,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = service_env(home, database_url, redis_server.url(), tiny_model_dir)
    engine = make_engine(database_url)
    job_id = queue_job(
        engine,
        redis_server.url(),
        tmp_path,
        max_steps=MAX_STEPS,
        log_every=LOG_EVERY,
        save_every=SAVE_EVERY,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        wait_for(lambda: recorded_step(engine, job_id) > 0, 120, "the first recorded step")
        pg_cluster.stop()  # the store goes away mid-training, the trainer goes on
        stopped_at = time.monotonic()
        events = home / "artifacts" / "jobs" / job_id / "output" / "events.jsonl"
        steps_before = events.read_text().count('"event": "step"')
        time.sleep(OUTAGE_S)
        steps_during = events.read_text().count('"event": "step"') - steps_before
        pg_cluster.start()
        assert time.monotonic() - stopped_at >= OUTAGE_S
        engine.dispose()  # connections of before the outage are dead
        job = wait_for(lambda: _finished(engine, job_id), 180, "the job to finish")
    finally:
        stop(worker)
    assert steps_during > 0, "the trainer must train on while the store is away"
    assert job.state == "succeeded" and job.attempt == 1, (job.error_code, job.error_message)
    assert trainer_launches(home, job_id) == 1  # one trainer ever ran for this job
    fence = holders(home / "artifacts" / "jobs" / job_id / "trainer.lock")
    assert [h["attempt"] for h in fence] == [1]
    with Session(engine) as session:
        statuses = session.exec(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "status")
        ).all()
        losses = session.exec(
            select(Metric)
            .where(Metric.job_id == job_id, Metric.name == "loss")
            .order_by(Metric.step)  # type: ignore[arg-type]
        ).all()
        duplicates = session.execute(
            text(
                "SELECT step, split, name, count(*) FROM metrics WHERE job_id = :job "
                "GROUP BY step, split, name HAVING count(*) > 1"
            ),
            {"job": job_id},
        ).all()
        checkpoints = session.exec(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
    assert [s.data["status"] for s in statuses] == ["succeeded"]
    assert [m.step for m in losses] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    assert duplicates == []
    # ten saves, five kept on disk (the trainer's default save_total_limit); rows follow them
    output = home / "artifacts" / "jobs" / job_id / "output"
    on_disk = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert on_disk == [180, 210, 240, 270, 300]
    assert sorted(c.step for c in checkpoints) == on_disk
    assert json.loads(events.read_text().splitlines()[-1])["status"] == "succeeded"


def _finished(engine: Engine, job_id: str) -> Job | None:
    try:
        with Session(engine) as session:
            job = session.get(Job, job_id)
    except OperationalError:
        return None
    return job if job is not None and job.state in ("succeeded", "failed", "cancelled") else None
