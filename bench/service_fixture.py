"""The API bench's services: a throw-away store (PostgreSQL database or SQLite file), the Redis
broker db, and the API (uvicorn) and Celery worker processes started against them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: the broker db, flushed at start and end (GLMFT_BENCH_REDIS overrides it)
REDIS_URL = os.environ.get("GLMFT_BENCH_REDIS", "redis://127.0.0.1:6379/12")
MODEL_NAME = "glm-4-tiny"
WORKER_NAME = "api-bench-node"


# ---------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# the stores and the services


@contextlib.contextmanager
def throwaway_store(store: str, home: Path) -> Iterator[str]:
    """A fresh database URL: a new PostgreSQL database (dropped after) or a new SQLite file."""
    if store == "sqlite":
        yield f"sqlite:///{home / 'glmft.db'}"
        return
    name = f"glmft_api_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_env(home: Path, database_url: str, model_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GLMFT_HOME": str(home),
        "GLMFT_DATABASE_URL": database_url,
        "GLMFT_BROKER_URL": REDIS_URL,
        f"GLMFT_MODELS__{MODEL_NAME}__PATH": str(model_dir),
        "GLMFT_WORKER_GPUS": "[]",
        "GLMFT_WORKER_NAME": WORKER_NAME,
        "GLMFT_ALLOW_ANONYMOUS": "true",  # no key: the default tenant (the local mode)
        "PYTHONUNBUFFERED": "1",
    }


def api_command(
    port: int,
    *,
    app: str = "api.main:create_app",
    workers: int = 1,
    loop: str = "auto",
    http: str = "auto",
    access_log: bool = True,
) -> list[str]:
    """uvicorn serving ``app`` (a factory) on ``port`` with ``workers`` processes."""
    command = [sys.executable, "-m", "uvicorn", "--factory", app]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--loop", loop, "--http", http]
    return command if access_log else [*command, "--no-access-log"]


def worker_command() -> list[str]:
    """The worker ``glmft up`` runs (solo pool, training queue), without the beat."""
    from api.commands.up import worker_command as glmft_worker_command

    return glmft_worker_command(pool="solo")


def start(
    command: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def api_ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def job_body(dataset_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "method": "lora",
        "training_dataset": dataset_id,
        "config": "tiny/lora",
        "gpus": 0,
        "overrides": overrides or {},
    }
