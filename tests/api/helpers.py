"""Helpers for the API tests: datasets, jobs, and reading the real Redis queue."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session

from api.queue import RUN_TRAINING_JOB, TRAINING_QUEUE
from core.models import Job
from tests.helpers import free_port, redis_url, wait_for

REPO = Path(__file__).resolve().parents[2]
DEMO_TRAIN = REPO / "trainer" / "assets" / "demo" / "train.jsonl"


def valid_jsonl(lines: int = 5) -> bytes:
    """A few valid conversations from the bundled demo data."""
    rows = DEMO_TRAIN.read_text(encoding="utf-8").splitlines()[:lines]
    return ("\n".join(rows) + "\n").encode()


def invalid_jsonl() -> bytes:
    """Line 2 has a bad role, line 3 is not JSON, line 4 has no assistant answer."""
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad_role = {"messages": [{"role": "bot", "content": "hi"}]}
    no_answer = {"messages": [{"role": "user", "content": "hi"}]}
    rows = [json.dumps(good), json.dumps(bad_role), "{not json", json.dumps(no_answer)]
    return ("\n".join(rows) + "\n").encode()


def upload(
    client: TestClient,
    content: bytes,
    *,
    filename: str = "train.jsonl",
    model: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    data = {"model": model} if model else None
    return client.post(
        "/datasets",
        files={"file": (filename, content, "application/jsonl")},
        data=data,
        headers=headers,
    )


def dataset_id(client: TestClient, content: bytes | None = None) -> str:
    response = upload(client, content or valid_jsonl())
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_body(training_dataset: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "glm-4-tiny",
        "method": "lora",
        "training_dataset": training_dataset,
        "config": "tiny/lora",
        "gpus": 0,
    }
    body.update(extra)
    return body


def create_job(client: TestClient, ds: str, key: str | None = None, **extra: Any) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return client.post("/jobs", json=job_body(ds, **extra), headers=headers)


def queued_job_ids(broker: redis.Redis) -> list[str]:
    """Job ids of the ``run_training_job`` messages waiting in the Redis list ``training``."""
    ids: list[str] = []
    for raw in broker.lrange(TRAINING_QUEUE, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_TRAINING_JOB
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def set_job(engine: Engine, job_id: str, **values: Any) -> None:
    """Arrange a job's columns directly, as a worker would."""
    with Session(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))  # type: ignore[arg-type]
        session.commit()


def assert_error(response: Any, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    """The envelope's shape, its X-Request-ID, and the code/param."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    error = body["error"]
    assert error["code"] == code, error
    assert error["message"]
    if param is not None:
        assert error.get("param") == param, error
    return dict(error)


def start_api(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """The API under uvicorn with ``env`` (GLMFT_ settings); returns it and its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    defaults = {"GLMFT_BROKER_URL": redis_url(14), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **defaults, **env})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(base), 60, "the API", every=0.2)
    except AssertionError:
        stop_api(process)
        raise
    return process, base


def stop_api(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
