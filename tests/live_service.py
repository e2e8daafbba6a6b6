"""The service with real parts for the client tests (SDK, CLI, the ``openai`` package): the API
under uvicorn with an API key and one Celery worker (prefork, 2 slots, CPU), Redis as broker,
PostgreSQL as store, training the tiny GLM-4. Started once per session by ``live_service``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from api.commands.up import worker_command
from core.db import upgrade
from tests.conftest import postgres_database
from tests.helpers import free_port, redis_url, wait_for

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = redis_url(10)
API_KEY = "sk-glmft-clients-test"
TENANT = "ci"
#: A key of another tenant, which must see none of ``TENANT``'s datasets, jobs and adapters.
OTHER_API_KEY = "sk-glmft-other-tenant"
MODEL = "glm-4-tiny"
DEMO_TRAIN = REPO / "trainer" / "assets" / "demo" / "train.jsonl"
#: A job of a few seconds on CPU: 4 steps, checkpoints at 2 and 4, no generation eval.
TINY_OVERRIDES: dict[str, Any] = {
    "training_args.max_steps": 4,
    "training_args.save_steps": 2,
    "training_args.logging_steps": 1,
    "training_args.eval_strategy": "no",
}
#: A job that outlives any test's patience (cancel it).
LONG_OVERRIDES: dict[str, Any] = {**TINY_OVERRIDES, "training_args.max_steps": 5000}


@dataclass(frozen=True)
class LiveService:
    base_url: str
    api_key: str
    database_url: str
    home: Path


def demo_jsonl(lines: int = 8) -> bytes:
    """The first conversations of the bundled demo data."""
    rows = DEMO_TRAIN.read_bytes().splitlines(keepends=True)[:lines]
    return b"".join(rows)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a warm shutdown waiting on a training task
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextmanager
def run_live_service(
    home: Path,
    tiny_model_dir: Path,
    *,
    more_models: dict[str, Path] | None = None,
    redis_db: int = 10,
) -> Iterator[LiveService]:
    """Start the API and a worker; stop both (and their process groups) afterwards.
    ``more_models`` registers more bases (name -> directory) beside ``glm-4-tiny``; a
    service beside the shared one needs its own ``redis_db`` (queue)."""
    broker = redis_url(redis_db)
    redis.Redis.from_url(broker).flushdb()
    with postgres_database("glmft_clients") as database_url:
        upgrade(database_url)
        env = {
            **os.environ,
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": database_url,
            "GLMFT_BROKER_URL": broker,
            # the shell form the docs give ("_" reads as "-"): glm-4-tiny
            "GLMFT_MODELS__glm_4_tiny__PATH": str(tiny_model_dir),
            "GLMFT_API_KEYS": json.dumps({API_KEY: TENANT, OTHER_API_KEY: "other"}),
            "GLMFT_WORKER_GPUS": "[]",
            "GLMFT_WORKER_NAME": "clients-node",
            "GLMFT_HEARTBEAT_INTERVAL_S": "1",
            "OMP_NUM_THREADS": "1",
            **{f"GLMFT_MODELS__{n}__PATH": str(p) for n, p in (more_models or {}).items()},
        }
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = (home / "service.log").open("ab")
        api = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
        api += ["--port", str(port), "--log-level", "warning"]
        processes = [
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: the worker's pool children go with it
            )
            for command in (api, worker_command(pool="prefork", concurrency=2))
        ]
        try:
            wait_for(lambda: _ready(base_url), 120, "the API")
            yield LiveService(base_url, API_KEY, database_url, home)
        finally:
            for process in processes:
                _stop(process)
            log.close()
            redis.Redis.from_url(broker).flushdb()
