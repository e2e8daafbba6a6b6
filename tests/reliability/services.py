"""Services the fault tests own, so they can stop, kill and restart them: a PostgreSQL cluster
(``initdb`` into tmp, run as the ``postgres`` OS user when we are root), a Redis server without
persistence, the API under uvicorn and Celery workers, all on free loopback ports."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlmodel import Session

from api.commands.up import worker_command
from core.jobs import JobState
from core.models import Dataset, Job
from tests.helpers import free_port, wait_for
from tests.trainer.finetune_helpers import tiny_config
from trainer.contract.run_config import run_config
from worker.celery_app import RUN_TRAINING_JOB, TRAINING_QUEUE

REPO = Path(__file__).resolve().parents[2]
MODEL = "glm-4-tiny"
#: a job of a couple of seconds: 2 steps, one checkpoint, no evaluation
TINY_JOB: dict[str, Any] = {
    "training_args.max_steps": 2,
    "training_args.save_steps": 2,
    "training_args.logging_steps": 1,
    "training_args.eval_strategy": "no",
}


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed")
    return found if isinstance(found, str) else found[0]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the ``postgres`` OS user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresCluster:
    """A cluster of our own in a fresh directory (trust auth, fsync off): stop and start it at
    will, e.g. to take the store away from a worker in the middle of a job."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        command = [_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        subprocess.run(
            _as_postgres([*command, "--no-sync", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off"
        )
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options]
        command += ["-l", str(self.root / "server.log"), "-w", "start"]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def stop(self) -> None:
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def create_database(self, name: str) -> str:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def postgres_cluster() -> Any:
    """A started :class:`PostgresCluster`, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="glmft-pg-"))  # not under pytest's 0700 tmp: postgres
    cluster = PostgresCluster(root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class RedisServer:
    """A Redis server of our own with persistence off: a restart loses every message."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.root)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), 10, "redis to start", every=0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def service_env(
    home: Path, database_url: str, broker_url: str, model_dir: Path, **settings: Any
) -> dict[str, str]:
    """The environment of an API or worker process; ``settings`` are ``GLMFT_<NAME>`` values."""
    env = {
        **os.environ,
        "GLMFT_HOME": str(home),
        "GLMFT_DATABASE_URL": database_url,
        "GLMFT_BROKER_URL": broker_url,
        f"GLMFT_MODELS__{MODEL}__PATH": str(model_dir),
        "GLMFT_WORKER_GPUS": "[]",
        "GLMFT_WORKER_NAME": "node-a",
        "GLMFT_HEARTBEAT_INTERVAL_S": "1",
        "GLMFT_HEARTBEAT_TIMEOUT_S": "6",
        "GLMFT_ALLOW_ANONYMOUS": "true",  # no key: the default tenant (the local mode)
        "OMP_NUM_THREADS": "1",
    }
    env.update({f"GLMFT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: its children go with it
        )


@dataclass
class Api:
    process: subprocess.Popen[bytes]
    base_url: str

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


def start_api(env: dict[str, str], log: Path) -> Api:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
    command += ["--port", str(port), "--log-level", "warning"]
    api = Api(_spawn(command, env, log), f"http://127.0.0.1:{port}")
    wait_for(lambda: _answers(api.base_url), 60, "the API to start", every=0.2)
    return api


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 1, beat: bool = True
) -> subprocess.Popen[bytes]:
    """A Celery worker on the training queue; with ``beat`` it runs the reaper's sweeps."""
    pool = "solo" if concurrency == 1 else "prefork"
    schedule = log.with_suffix(".beat") if beat else None
    command = worker_command(pool=pool, concurrency=concurrency, beat_schedule=schedule)
    return _spawn(command, env, log)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a process and its group (SIGKILL after 30 s)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of its group


def upload_dataset(client: httpx.Client, lines: int = 8) -> str:
    rows = (REPO / "trainer" / "assets" / "demo" / "train.jsonl").read_bytes().splitlines(True)
    response = client.post("/datasets", files={"file": ("train.jsonl", b"".join(rows[:lines]))})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_body(dataset: str, **overrides: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "method": "lora",
        "training_dataset": dataset,
        "config": "tiny/lora",
        "gpus": 0,
        "overrides": {**TINY_JOB, **overrides},
    }


def trainer_launches(home: Path, job_id: str) -> int:
    """How many trainer processes were ever started for ``job_id`` (one header line each in
    its ``trainer.log``)."""
    log = home / "artifacts" / "jobs" / job_id / "trainer.log"
    if not log.is_file():
        return 0
    return sum(line.startswith("=== ") for line in log.read_text(errors="replace").splitlines())


def queue_job(
    engine: Engine,
    broker_url: str,
    tmp_path: Path,
    *,
    max_steps: int,
    save_every: int,
    log_every: int = 10,
) -> str:
    """A queued LoRA job of the tiny preset straight in SQL, published as the API would."""
    data = tmp_path / "train.jsonl"
    rows = (REPO / "trainer" / "assets" / "demo" / "train.jsonl").read_bytes().splitlines(True)
    data.write_bytes(b"".join(rows[:8]))
    preset = tiny_config(
        "lora",
        training_args={
            "max_steps": max_steps,
            "logging_steps": log_every,
            "save_steps": save_every,
            "eval_strategy": "no",
        },
    )
    config = run_config(preset, has_validation=False)  # the run config, as the API admits it
    with Session(engine, expire_on_commit=False) as session:
        dataset = Dataset(
            tenant_id="default",
            filename="train.jsonl",
            path=str(data),
            bytes=data.stat().st_size,
            sha256="0" * 64,
            conversations=8,
            valid=True,
        )
        session.add(dataset)
        session.commit()
        job = Job(
            tenant_id="default",
            state=JobState.QUEUED.value,
            model=MODEL,
            method="lora",
            training_dataset_id=dataset.id,
            config=config,
            gpus=0,
        )
        session.add(job)
        session.commit()
    Celery(broker=broker_url).send_task(RUN_TRAINING_JOB, args=[job.id], queue=TRAINING_QUEUE)
    return job.id
