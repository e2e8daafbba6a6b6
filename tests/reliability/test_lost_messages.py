"""SQL is the truth for the queue: jobs whose broker message is gone still run, once.

- Redis restarts without persistence while five jobs wait and no worker consumes: the reaper's
  reconciler publishes them again and each runs exactly once.
- The API is SIGKILLed between committing a job and publishing it: the job still runs, and a
  client's retry with the same Idempotency-Key publishes it at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, select

from core.db import make_engine
from core.models import Job
from tests.helpers import wait_for
from tests.reliability.services import (
    RedisServer,
    job_body,
    service_env,
    start_api,
    start_worker,
    stop,
    trainer_launches,
    upload_dataset,
)
from worker.broker import covered_jobs
from worker.celery_app import TRAINING_QUEUE


def _jobs(database_url: str, ids: list[str]) -> list[Job]:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            return [j for j in session.exec(select(Job)).all() if j.id in ids]
    finally:
        engine.dispose()


def _all_succeeded(database_url: str, ids: list[str]) -> list[Job] | None:
    jobs = _jobs(database_url, ids)
    done = [j for j in jobs if j.state in ("succeeded", "failed", "cancelled")]
    return jobs if len(done) == len(ids) else None


def test_jobs_queued_across_a_broker_restart_run_once(
    database_url: str, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = service_env(home, database_url, redis_server.url(), tiny_model_dir, publish_grace_s=1)
    api = start_api(env, tmp_path / "api.log")
    try:
        with api.client() as client:
            dataset = upload_dataset(client)
            ids = []
            for _ in range(5):
                response = client.post("/jobs", json=job_body(dataset))
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
    finally:
        stop(api.process)
    assert covered_jobs(redis_server.url(), TRAINING_QUEUE) == set(ids)
    redis_server.restart()  # persistence off: every message is gone, SQL still says queued
    assert covered_jobs(redis_server.url(), TRAINING_QUEUE) == set()
    assert {j.state for j in _jobs(database_url, ids)} == {"queued"}
    worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
    try:
        jobs = wait_for(lambda: _all_succeeded(database_url, ids), 240, "the five jobs")
    finally:
        stop(worker)
    assert [(j.state, j.attempt) for j in jobs] == [("succeeded", 1)] * 5
    assert [trainer_launches(home, job_id) for job_id in ids] == [1] * 5


def test_a_job_committed_by_an_api_killed_before_publishing_runs(
    database_url: str, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = service_env(home, database_url, redis_server.url(), tiny_model_dir, publish_grace_s=1)
    # an API that holds each new job between commit and publish, long enough to be killed there
    paused = start_api({**env, "GLMFT_PAUSE_AFTER_COMMIT_S": "120"}, tmp_path / "paused.log")
    with paused.client() as client:
        dataset = upload_dataset(client)
    answers: list[Any] = []

    def create(key: str | None) -> None:
        headers = {"Idempotency-Key": key} if key else {}
        url = f"{paused.base_url}/jobs"
        try:
            answers.append(httpx.post(url, json=job_body(dataset), headers=headers, timeout=60))
        except httpx.TransportError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=create, args=(key,)) for key in ("ci-run-7", None)]
    for thread in threads:
        thread.start()
    jobs = wait_for(lambda: _queued(database_url), 30, "both jobs committed")
    stop(paused.process, signal.SIGKILL)  # between commit and publish
    for thread in threads:
        thread.join(timeout=30)
    assert all(isinstance(a, httpx.TransportError) for a in answers)  # nobody got an answer
    assert covered_jobs(redis_server.url(), TRAINING_QUEUE) == set()
    assert all(j.enqueued_at is None for j in jobs)
    keyed = next(j for j in jobs if j.idempotency_key == "ci-run-7")
    other = next(j for j in jobs if j.idempotency_key is None)

    # the client retries with its key: the same job, published now
    api = start_api(env, tmp_path / "api2.log")
    try:
        with api.client() as client:
            retry = client.post(
                "/jobs", json=job_body(dataset), headers={"Idempotency-Key": "ci-run-7"}
            )
        assert retry.status_code == 200 and retry.json()["id"] == keyed.id
        assert covered_jobs(redis_server.url(), TRAINING_QUEUE) == {keyed.id}
        # the other job nobody asks about again: the reconciler publishes it
        worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
        try:
            done = wait_for(
                lambda: _all_succeeded(database_url, [keyed.id, other.id]), 180, "both jobs"
            )
        finally:
            stop(worker)
    finally:
        stop(api.process)
    assert sorted((j.state, j.attempt) for j in done) == [("succeeded", 1)] * 2
    assert trainer_launches(home, keyed.id) == trainer_launches(home, other.id) == 1


def _queued(database_url: str) -> list[Job] | None:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            jobs = list(session.exec(select(Job)).all())
    finally:
        engine.dispose()
    return jobs if len(jobs) == 2 else None
