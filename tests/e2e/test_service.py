"""The whole service with real parts: the API under uvicorn, a Celery worker (prefork, 2 slots,
declaring GPUs 0 and 1), Redis as broker and PostgreSQL as store, training the tiny GLM-4."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlmodel import Session, select

from api.commands.up import worker_command
from core.db import make_engine, upgrade
from core.models import Job, WorkerNode
from tests.conftest import postgres_database
from tests.helpers import free_port, redis_url, wait_for
from tests.trainer.finetune_helpers import REPO

REDIS_URL = redis_url(13)
DEMO = REPO / "trainer" / "assets" / "demo"


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[httpx.Client, str]]:
    home = tmp_path_factory.mktemp("service")
    redis.Redis.from_url(REDIS_URL).flushdb()
    with postgres_database("glmft_e2e") as database_url:
        upgrade(database_url)
        env = {
            **os.environ,
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": database_url,
            "GLMFT_BROKER_URL": REDIS_URL,
            "GLMFT_ALLOW_ANONYMOUS": "true",
            "GLMFT_MODELS__glm-4-tiny__PATH": str(tiny_model_dir),
            "GLMFT_WORKER_GPUS": "[0, 1]",
            "GLMFT_WORKER_NAME": "gpu-node-1",
            "GLMFT_HEARTBEAT_INTERVAL_S": "1",
            "OMP_NUM_THREADS": "1",
        }
        port = free_port()
        log = (home / "service.log").open("ab")
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--factory",
                    "api.main:create_app",
                    "--port",
                    str(port),
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                worker_command(pool="prefork", concurrency=2),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        ]
        engine = make_engine(database_url)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
            wait_for(lambda: _ready(client), 120, "the API")
            wait_for(lambda: _nodes(engine), 120, "the worker's GPU inventory")
            yield client, database_url
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)
            engine.dispose()
            redis.Redis.from_url(REDIS_URL).flushdb()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _nodes(engine: Any) -> list[WorkerNode]:
    with Session(engine) as session:
        return list(session.exec(select(WorkerNode)).all())


def upload(client: httpx.Client, content: bytes, name: str = "train.jsonl") -> dict[str, Any]:
    response = client.post("/datasets", files={"file": (name, content, "application/jsonl")})
    assert response.status_code in (201, 422), response.text
    return dict(response.json())


def submit(client: httpx.Client, dataset: str, key: str, **overrides: Any) -> dict[str, Any]:
    body = {
        "model": "glm-4-tiny",
        "method": "lora",
        "training_dataset": dataset,
        "config": "tiny/lora",
        "gpus": overrides.pop("gpus", 1),
        "overrides": {
            "training_args.eval_strategy": "no",
            "training_args.logging_steps": 2,
            **overrides,
        },
    }
    response = client.post("/jobs", json=body, headers={"Idempotency-Key": key})
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = client.get(f"/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def test_upload_job_and_results_through_the_api(service: tuple[httpx.Client, str]) -> None:
    client, _ = service
    # an invalid upload is rejected with its lines, and can never feed a job
    bad = upload(client, b'{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n', "bad.jsonl")
    lines = sorted(e["line"] for e in bad["report"]["errors"])
    assert bad["valid"] is False and lines == [1, 2]
    # a valid one trains; a CI retry with the same key creates one job
    rows = (DEMO / "train.jsonl").read_bytes().splitlines(keepends=True)[:8]
    dataset = upload(client, b"".join(rows))
    first = submit(
        client,
        dataset["id"],
        "ci-build-7",
        **{"training_args.max_steps": 6, "training_args.save_steps": 3},
    )
    again = submit(
        client,
        dataset["id"],
        "ci-build-7",
        **{"training_args.max_steps": 6, "training_args.save_steps": 3},
    )
    assert again["id"] == first["id"]
    job = wait_for(lambda: finished(client, first["id"]), 240, "the job")
    assert job["state"] == "succeeded", job
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 500}).json()["data"]
    assert {"started", "step", "checkpoint", "status"} <= {e["kind"] for e in events}, events
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()["data"]
    assert any(m["name"] == "loss" and m["split"] == "train" for m in metrics)
    steps = [c["step"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]]
    assert sorted(steps) == [3, 6]
    models = {m["id"] for m in client.get("/models").json()["data"]}
    assert job["adapter_id"] in models and "glm-4-tiny" in models
    # more GPUs than the only node has is refused at once
    response = client.post(
        "/jobs",
        json={
            "model": "glm-4-tiny",
            "method": "lora",
            "training_dataset": dataset["id"],
            "gpus": 3,
        },
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "insufficient_capacity"


def test_two_one_gpu_jobs_get_disjoint_gpus_and_cancel_stops_one(
    service: tuple[httpx.Client, str],
) -> None:
    client, database_url = service
    rows = (DEMO / "train.jsonl").read_bytes().splitlines(keepends=True)[:8]
    dataset = upload(client, b"".join(rows))["id"]
    long_run = {"training_args.max_steps": 2000, "training_args.save_steps": 2}
    jobs = [submit(client, dataset, f"pair-{i}", **long_run)["id"] for i in range(2)]
    engine = make_engine(database_url)

    def both_running() -> list[Job] | None:
        with Session(engine) as session:
            rows = [session.get(Job, j, populate_existing=True) for j in jobs]
        return (
            rows
            if all(r is not None and r.state == "running" and r.step > 0 for r in rows)
            else None
        )  # type: ignore[return-value]

    running = wait_for(both_running, 180, "both jobs to train at once")
    assert sorted(g for job in running for g in job.gpu_ids) == [0, 1]  # disjoint leases
    for job_id in jobs:
        response = client.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text
    for job_id in jobs:
        job = wait_for(lambda j=job_id: finished(client, j), 60, "the cancel")
        assert job["state"] == "cancelled"
        assert client.get(f"/jobs/{job_id}/checkpoints").json()["data"]  # kept
    engine.dispose()
    assert json.loads(client.post(f"/jobs/{jobs[0]}/cancel").text)["error"]["code"] == (
        "invalid_job_transition"
    )
