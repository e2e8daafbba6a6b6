"""A real Celery worker (Redis broker, PostgreSQL store) trains the tiny model end to end:
success with events/metrics/checkpoints/adapter, cancel mid-training, and a SIGKILLed worker
whose job resumes from its checkpoint on a restarted worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlmodel import Session, select

from api.commands.up import worker_command
from core.db import make_engine, upgrade
from core.jobs import JobState, transition
from core.models import Adapter, Checkpoint, Dataset, Job, JobEvent, Metric, WorkerNode
from tests.conftest import postgres_database
from tests.helpers import redis_url, wait_for
from tests.trainer.finetune_helpers import REPO, tiny_config
from trainer.checkpoints import latest_complete
from trainer.contract.run_config import run_config
from worker.celery_app import RUN_TRAINING_JOB, TRAINING_QUEUE

REDIS_URL = redis_url(11)
CONVERSATIONS = [
    {
        "messages": [
            {"role": "user", "content": f"类型#裙*颜色#{c}"},
            {"role": "assistant", "content": f"这款{c}裙子大方得体。"},
        ]
    }
    for c in ("红色", "白色", "黑色", "蓝色")
]


@pytest.fixture
def database_url() -> Iterator[str]:
    with postgres_database("glmft_worker") as url:
        upgrade(url)
        yield url


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path, database_url: str) -> Iterator[dict[str, str]]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    values = {
        **os.environ,
        "GLMFT_HOME": str(tmp_path / "home"),
        "GLMFT_DATABASE_URL": database_url,
        "GLMFT_BROKER_URL": REDIS_URL,
        "GLMFT_MODELS__glm-4-tiny__PATH": str(tiny_model_dir),
        "GLMFT_WORKER_GPUS": "[]",
        "GLMFT_WORKER_NAME": "node-a",
        "GLMFT_HEARTBEAT_INTERVAL_S": "1",
        "GLMFT_HEARTBEAT_TIMEOUT_S": "6",
        "OMP_NUM_THREADS": "1",
    }
    yield values
    redis.Redis.from_url(REDIS_URL).flushdb()


def start_worker(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / "worker.log").open("ab")
    return subprocess.Popen(
        worker_command(pool="solo", beat_schedule=tmp_path / "beat-schedule"),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group: the embedded beat process goes with it
    )


def submit(engine: Engine, tmp_path: Path, **training_args: Any) -> str:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CONVERSATIONS))
    preset = tiny_config(
        "lora", training_args={"eval_strategy": "no", "logging_steps": 2, **training_args}
    )
    config = run_config(preset, has_validation=False)  # the run config, as the API admits it
    with Session(engine, expire_on_commit=False) as session:
        dataset = Dataset(
            tenant_id="default",
            filename="train.jsonl",
            path=str(data),
            bytes=data.stat().st_size,
            sha256="0" * 64,
            conversations=4,
            valid=True,
        )
        session.add(dataset)
        session.commit()
        job = Job(
            tenant_id="default",
            state=JobState.QUEUED.value,
            model="glm-4-tiny",
            method="lora",
            training_dataset_id=dataset.id,
            config=config,
            gpus=0,
            max_attempts=3,
        )
        session.add(job)
        session.commit()
    Celery(broker=REDIS_URL).send_task(RUN_TRAINING_JOB, args=[job.id], queue=TRAINING_QUEUE)
    return job.id


def job_of(engine: Engine, job_id: str) -> Job:
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def rows(engine: Engine, model: Any, job_id: str) -> list[Any]:
    """The job's rows of ``model`` in the order they were written (a bare SELECT has none)."""
    with Session(engine) as session:
        statement = select(model).where(model.job_id == job_id).order_by(model.id)
        return list(session.exec(statement).all())


def terminal(engine: Engine, job_id: str) -> Job | None:
    job = job_of(engine, job_id)
    return job if job.state in ("succeeded", "failed", "cancelled") else None


def test_worker_trains_a_job_and_records_everything(env: dict[str, str], tmp_path: Path) -> None:
    engine = make_engine(env["GLMFT_DATABASE_URL"])
    worker = start_worker(env, tmp_path)
    try:
        wait_for(lambda: rows_of_nodes(engine), 60, "the worker to announce itself")
        job_id = submit(engine, tmp_path, max_steps=8, save_steps=4)
        job = wait_for(lambda: terminal(engine, job_id), 180, "the job to finish")
        assert job.state == "succeeded", (job.error_code, job.error_message)
        assert (job.step, job.max_steps, job.attempt, job.worker) == (8, 8, 1, "node-a")
        kinds = [e.kind for e in rows(engine, JobEvent, job_id)]
        assert kinds[:2] == ["running", "started"] and kinds[-2:] == ["status", "succeeded"]
        assert kinds.count("step") == 4
        losses = [m for m in rows(engine, Metric, job_id) if m.name == "loss"]
        assert [m.step for m in losses] == [2, 4, 6, 8]
        checkpoints = rows(engine, Checkpoint, job_id)
        assert sorted(c.step for c in checkpoints) == [4, 8]
        assert all(Path(c.path).is_dir() and c.bytes > 0 for c in checkpoints)
        with Session(engine) as session:
            adapter = session.get(Adapter, f"ft:glm-4-tiny:lora:{job_id}")
        assert adapter is not None and adapter.step == 8 and job.adapter_id == adapter.id
    finally:
        stop(worker)


def test_cancel_stops_training_and_keeps_checkpoints(env: dict[str, str], tmp_path: Path) -> None:
    engine = make_engine(env["GLMFT_DATABASE_URL"])
    worker = start_worker(env, tmp_path)
    try:
        job_id = submit(engine, tmp_path, max_steps=400, save_steps=2)
        wait_for(lambda: rows(engine, Checkpoint, job_id), 120, "a first checkpoint")
        with Session(engine) as session:  # what POST /jobs/{id}/cancel does
            transition(session, job_id, JobState.CANCELLING, cancel_requested=True)
        asked = time.monotonic()
        job = wait_for(lambda: terminal(engine, job_id), 60, "the cancel")
        assert job.state == "cancelled" and time.monotonic() - asked < 20
        states = [e.kind for e in rows(engine, JobEvent, job_id) if "state" in e.data]
        assert states == ["running", "cancelling", "cancelled"]
        assert job.step < 400 and rows(engine, Checkpoint, job_id)
        assert "python" not in trainer_processes(job_id)
    finally:
        stop(worker)


def test_sigkilled_worker_job_resumes_from_checkpoint_on_a_new_worker(
    env: dict[str, str], tmp_path: Path
) -> None:
    engine = make_engine(env["GLMFT_DATABASE_URL"])
    first = start_worker(env, tmp_path)
    job_id = submit(engine, tmp_path, max_steps=30, save_steps=4)
    output = Path(env["GLMFT_HOME"]) / "artifacts" / "jobs" / job_id / "output"
    try:
        # watched on disk, not in the database: the worker stores a checkpoint a moment after
        # the trainer writes it, and the tiny model's 30 steps can end in that moment (CI once
        # killed a worker whose job had already succeeded)
        wait_for(
            lambda: latest_complete(output) is not None,
            120,
            "a checkpoint before the crash",
            every=0.02,
        )
        os.killpg(first.pid, signal.SIGKILL)  # the node dies: worker and its beat, no cleanup
        first.wait(timeout=10)
        assert trainer_processes(job_id) == "" or wait_for(
            lambda: trainer_processes(job_id) == "", 15, "the orphaned trainer to exit"
        )
    finally:
        stop(first)
    second = start_worker({**env, "GLMFT_WORKER_NAME": "node-b"}, tmp_path)
    try:
        job = wait_for(lambda: terminal(engine, job_id), 240, "the recovered job")
        assert job.state == "succeeded", (job.error_code, job.error_message)
        assert job.attempt == 2 and job.worker == "node-b" and job.step == 30
        # whatever the dead worker's trainer wrote but never stored is stored by the next attempt,
        # and the steps the resumed trainer logs again (after its checkpoint) are stored once
        logged = sorted(m.step for m in rows(engine, Metric, job_id) if m.name == "loss")
        assert logged == list(range(2, 31, 2))
        started = [e.data for e in rows(engine, JobEvent, job_id) if e.kind == "started"]
        assert started[0]["resume_from"] is None
        states = [
            (e.kind, e.data["previous"])
            for e in rows(engine, JobEvent, job_id)
            if "state" in e.data
        ]
        assert states == [
            ("running", "queued"),
            ("queued", "running"),  # the reaper: the worker was lost, the job re-queued
            ("running", "queued"),
            ("succeeded", "running"),
        ]
        assert started[-1]["resume_from"].split("checkpoint-")[-1].isdigit()
    finally:
        stop(second)


def rows_of_nodes(engine: Engine) -> list[WorkerNode]:
    with Session(engine) as session:
        return list(session.exec(select(WorkerNode)).all())


def trainer_processes(job_id: str) -> str:
    found = subprocess.run(
        ["pgrep", "-af", f"jobs/{job_id}/"], capture_output=True, text=True, check=False
    )
    return found.stdout.strip()


def stop(worker: subprocess.Popen[bytes]) -> None:
    """Stop the worker's whole process group (the worker, its beat, any stragglers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
