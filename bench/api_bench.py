"""API benchmark: ``POST /jobs`` and ``GET /jobs/{id}`` under 50 concurrent clients, and the time
from submit to the trainer's first step on a warm worker.

Everything real and on loopback: the API under ``uvicorn --factory api.main:create_app`` (one
process), Redis at 127.0.0.1:6379 db 12 as the broker (flushed at start and end), and as the store
a throw-away PostgreSQL database on 127.0.0.1:5432 (user ``postgres``, dropped at the end) or a
temporary SQLite file. The tiny GLM-4 is built and registered as ``glm-4-tiny``.

Phases:

1. ``POST /jobs`` from ``--clients`` asyncio clients (one ``httpx.AsyncClient`` and connection
   each, closed loop: a client sends its next request when the previous one answered), each
   request with its own ``Idempotency-Key``; ``--requests`` in all or until ``--time-limit``.
2. ``GET /jobs/{id}`` the same way over the ids phase 1 created.
   Each loaded phase is preceded by an unloaded reference (one client, ``--unloaded-requests``).
   Per request: latency p50/p90/p99/max, throughput, errors (any non-2xx or transport error), the
   app's own view (its Prometheus histogram: mean time inside the app, share <= 50 ms) and the CPU
   seconds of the API process, of this client process and of the whole machine.
3. In-process breakdown (no HTTP, one thread, sequential): the handler's steps timed one by one,
   with SQL statement time from SQLAlchemy cursor events.
4. Submit to first step: the queue of phases 1-3 is purged (Redis db flushed, their queued jobs
   marked cancelled in SQL), a Celery worker (``--pool=solo``) is started and waited for (warm),
   then ``--runs`` times: one tiny LoRA job (max_steps 4, logging_steps 1, eval off) is submitted
   and ``GET /jobs/{id}/events`` (and ``GET /jobs/{id}``) are polled every 0.1 s until a ``step``
   event shows; the next run starts when the job has finished.

Prints markdown tables and merges the results, under the store's name, into
``bench/results/api_bench.json``.

Run: ``.venv/bin/python bench/api_bench.py [--clients 50] [--requests 2000]
[--store postgresql|sqlite]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, update
from sqlmodel import Session, col, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.db import make_engine  # noqa: E402
from core.jobs import JobState  # noqa: E402
from core.models import Job, WorkerNode, utcnow  # noqa: E402
from core.settings import BaseModelEntry, Settings  # noqa: E402

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"
DEMO_TRAIN = REPO / "trainer" / "assets" / "demo" / "train.jsonl"
MODEL_NAME = "glm-4-tiny"
WORKER_NAME = "api-bench-node"
TARGET_P99_MS = 50.0
POLL_S = 0.1
BODY_TOTAL = "handler body, total"
TERMINAL = {"succeeded", "failed", "cancelled"}
VERSIONED_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "sqlalchemy",
    "sqlmodel",
    "psycopg",
    "alembic",
    "celery",
    "kombu",
    "redis",
    "httpx",
    "anyio",
    "torch",
    "transformers",
    "peft",
)


# ---------------------------------------------------------------------------------------------
# small helpers


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot (``/proc/stat``; busy excludes steal)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:7]) - idle) / tick, steal / tick


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far: the API process, this (client) process, the machine, stolen."""

    api: float
    client: float
    machine: float
    steal: float

    @classmethod
    def take(cls, api_pid: int) -> CpuSnapshot:
        machine, steal = machine_cpu_s()
        return cls(process_cpu_s(api_pid), self_cpu_s(), machine, steal)


def device() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
    }


def versions(store: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(redis.RedisError):
        info = redis.Redis.from_url(REDIS_URL).info("server")
        found["redis_server"] = str(info.get("redis_version"))
    if store == "postgresql":
        with contextlib.suppress(psycopg.Error), psycopg.connect(POSTGRES_ADMIN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql_server"] = str(row[0]) if row else "?"
    else:
        found["sqlite"] = sqlite3.sqlite_version
    return found


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


def parse_time(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


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
        "PYTHONUNBUFFERED": "1",
    }


def api_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def worker_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-Q",
        "training",
        "--pool=solo",
        "--loglevel=INFO",
    ]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


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


# ---------------------------------------------------------------------------------------------
# load phases


@dataclass
class Load:
    """What one load phase saw."""

    name: str
    clients: int
    planned: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_by_time_limit: bool = False
    api_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    machine_busy_s: float = 0.0
    steal_s: float = 0.0
    app_view: dict[str, float | None] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.statuses.items() if not code.startswith("2"))

    def summary(self) -> dict[str, Any]:
        done = max(self.done, 1)
        return {
            "name": self.name,
            "clients": self.clients,
            "planned_requests": self.planned,
            "requests": self.done,
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "error_samples": self.error_samples,
            "wall_s": round(self.wall_s, 3),
            "throughput_rps": round(self.done / self.wall_s, 1) if self.wall_s else None,
            "stopped_by_time_limit": self.stopped_by_time_limit,
            **latency_summary(self.latencies),
            "cpu_ms_per_request": {
                "api_process": round(1000 * self.api_cpu_s / done, 2),
                "client_process": round(1000 * self.client_cpu_s / done, 2),
                "machine_total": round(1000 * self.machine_busy_s / done, 2),
            },
            "cpu_cores_busy": {
                "api_process": round(self.api_cpu_s / self.wall_s, 2) if self.wall_s else None,
                "client_process": round(self.client_cpu_s / self.wall_s, 2)
                if self.wall_s
                else None,
                "machine_total": round(self.machine_busy_s / self.wall_s, 2)
                if self.wall_s
                else None,
                "stolen_by_hypervisor": round(self.steal_s / self.wall_s, 2)
                if self.wall_s
                else None,
            },
            "app_view": self.app_view,
        }


def scrape_histogram(base_url: str, method: str, route: str) -> dict[str, float]:
    """The app's request-duration histogram of one route: count, sum and cumulative buckets."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "glmft_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("method") != method or sample.labels.get("route") != route:
                continue
            if sample.name.endswith("_count"):
                found["count"] = sample.value
            elif sample.name.endswith("_sum"):
                found["sum"] = sample.value
            elif sample.name.endswith("_bucket"):
                found[f"le_{sample.labels['le']}"] = sample.value
    return found


def app_view(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean time inside the app and the share of requests the app finished within 50 ms."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return {"requests": 0, "mean_ms": None, "share_le_50ms": None}
    total = after.get("sum", 0) - before.get("sum", 0)
    within = after.get("le_0.05", 0) - before.get("le_0.05", 0)
    return {
        "requests": count,
        "mean_ms": round(1000 * total / count, 2),
        "share_le_50ms": round(within / count, 4),
    }


RequestFn = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def drive(
    load: Load, base_url: str, api_pid: int, request: RequestFn, time_limit: float
) -> None:
    """``load.clients`` closed-loop clients share ``load.planned`` requests (or the time limit).

    Only the requests are measured: building the clients and opening their connections is not.
    """
    counter = iter(range(load.planned))
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(60.0))
        for _ in range(load.clients)
    ]
    try:
        # open every connection first, so the measured requests do not pay for it
        await asyncio.gather(*(c.get("/healthz") for c in clients))
        deadline = time.perf_counter() + time_limit

        async def client_loop(client: httpx.AsyncClient) -> None:
            for index in counter:
                if time.perf_counter() > deadline:
                    load.stopped_by_time_limit = True
                    return
                started = time.perf_counter()
                try:
                    response = await request(client, index)
                except httpx.HTTPError as exc:
                    load.latencies.append(time.perf_counter() - started)
                    load.statuses[type(exc).__name__] += 1
                    if len(load.error_samples) < 5:
                        load.error_samples.append(f"{type(exc).__name__}: {exc}")
                    continue
                load.latencies.append(time.perf_counter() - started)
                load.statuses[str(response.status_code)] += 1
                if not response.is_success and len(load.error_samples) < 5:
                    load.error_samples.append(f"{response.status_code}: {response.text[:300]}")

        before = CpuSnapshot.take(api_pid)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in clients))
        load.wall_s = time.perf_counter() - started
        after = CpuSnapshot.take(api_pid)
        load.api_cpu_s = after.api - before.api
        load.client_cpu_s = after.client - before.client
        load.machine_busy_s = after.machine - before.machine
        load.steal_s = after.steal - before.steal
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def run_load(
    *,
    name: str,
    base_url: str,
    api_pid: int,
    clients: int,
    requests: int,
    time_limit: float,
    request: RequestFn,
    route: tuple[str, str],
) -> Load:
    load = Load(name=name, clients=clients, planned=requests)
    before_hist = scrape_histogram(base_url, *route)
    asyncio.run(drive(load, base_url, api_pid, request, time_limit))
    load.app_view = app_view(before_hist, scrape_histogram(base_url, *route))
    s = load.summary()
    print(
        f"  {name}: {s['requests']} requests, {s['errors']} errors, {s['throughput_rps']} req/s,"
        f" p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms",
        flush=True,
    )
    return load


def job_body(dataset_id: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "method": "lora",
        "training_dataset": dataset_id,
        "config": "tiny/lora",
        "gpus": 0,
        "overrides": overrides or {},
    }


# ---------------------------------------------------------------------------------------------
# in-process breakdown of one request's work


class StepTimer:
    """Accumulates wall time per named step, plus SQL statement time from cursor events."""

    def __init__(self, engine: Engine) -> None:
        self.totals: defaultdict[str, float] = defaultdict(float)
        self.statements = 0
        self._started: list[float] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, *_: Any) -> None:
        self.totals["sql statements (cursor.execute)"] += time.perf_counter() - self._started.pop()
        self.statements += 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - started

        return timed

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - started

    def reset(self) -> None:
        self.totals.clear()
        self.statements = 0


def breakdown(settings: Settings, dataset_id: str, n: int) -> dict[str, Any]:
    """Time the steps of the two handlers' bodies in this process (sequential, no HTTP).

    POST: ``api.services.jobs.create_job`` (request hash, idempotency lookup, model and dataset
    lookups, config resolution, INSERT + COMMIT, Redis publish) + queue position + the public view
    and its JSON. GET: ``session.get`` + queue position + latest metrics + the public view.
    """
    from api.queue import CeleryEnqueuer
    from api.schemas.jobs import JobCreate
    from api.services import job_queries
    from api.services import jobs as service

    engine = make_engine(settings.resolved_database_url)
    timer = StepTimer(engine)
    enqueuer = CeleryEnqueuer(settings.resolved_broker_url)
    patched = ("request_hash", "_replay", "resolve_model", "usable_dataset", "resolve_config")
    originals = {name: getattr(service, name) for name in patched}
    original_enqueue = enqueuer.enqueue_job
    for name in patched:
        setattr(service, name, timer.wrap(name, originals[name]))
    setattr(enqueuer, "enqueue_job", timer.wrap("enqueue (Redis publish)", original_enqueue))  # noqa: B010
    job_in = JobCreate.model_validate(job_body(dataset_id))
    created: list[str] = []

    def post_once() -> None:
        with Session(engine, expire_on_commit=False) as session:
            setattr(session, "commit", timer.wrap("session.commit", session.commit))  # noqa: B010
            with timer.step(BODY_TOTAL):
                job, _ = service.create_job(
                    session=session,
                    settings=settings,
                    enqueuer=enqueuer,
                    tenant=settings.default_tenant,
                    job_in=job_in,
                    idempotency_key=uuid.uuid4().hex,
                )
                with timer.step("queue_position"):
                    position = job_queries.queue_position(session, job)
                with timer.step("job_public + JSON"):
                    job_queries.job_public(job, queue_position=position).model_dump_json()
            created.append(job.id)

    def get_once(job_id: str) -> None:
        with Session(engine, expire_on_commit=False) as session, timer.step(BODY_TOTAL):
            with timer.step("session.get (job)"):
                job = session.get(Job, job_id)
            if job is None:
                raise LookupError(job_id)
            with timer.step("queue_position"):
                position = job_queries.queue_position(session, job)
            with timer.step("latest_metrics"):
                metrics = job_queries.latest_metrics(session, job.id)
            with timer.step("job_public + JSON"):
                job_queries.job_public(
                    job, queue_position=position, latest_metrics=metrics
                ).model_dump_json()

    def measure(fn: Callable[[int], None]) -> dict[str, Any]:
        for i in range(min(5, n)):  # warm caches and the connection pool
            fn(i)
        timer.reset()
        for i in range(n):
            fn(i)
        total = timer.totals[BODY_TOTAL]
        steps = {
            name: round(1000 * seconds / n, 3)
            for name, seconds in sorted(timer.totals.items(), key=lambda kv: -kv[1])
        }
        statements = round(timer.statements / n, 2)
        share_in_sql = round(timer.totals["sql statements (cursor.execute)"] / total, 3)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(min(n, 50)):
            fn(i)
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
        return {
            "requests": n,
            "ms_per_request": steps,
            "sql_statements_per_request": statements,
            "share_in_sql": share_in_sql,
            "cprofile_top_cumulative": text.getvalue().splitlines()[:60],
        }

    try:
        post = measure(lambda _i: post_once())
        get = measure(lambda i: get_once(created[i % len(created)]))
    finally:
        for name, fn in originals.items():
            setattr(service, name, fn)
        enqueuer.close()
        engine.dispose()
    asgi = asyncio.run(through_asgi(settings, dataset_id, n))
    post["through_asgi_ms"], get["through_asgi_ms"] = asgi["POST /jobs"], asgi["GET /jobs/{id}"]
    return {"post_jobs": post, "get_job": get}


async def through_asgi(settings: Settings, dataset_id: str, n: int) -> dict[str, dict[str, float]]:
    """Whole requests through the app in this process (``httpx.ASGITransport``: FastAPI,
    middleware, validation, the handler in the thread pool, serialization; no uvicorn, no socket),
    one at a time."""
    from api.main import create_app

    app = create_app(settings)
    body = job_body(dataset_id)
    ids: list[str] = []
    result: dict[str, dict[str, float]] = {}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as c,
    ):

        async def post(_index: int) -> httpx.Response:
            response = await c.post(
                "/jobs", json=body, headers={"Idempotency-Key": f"api-bench-{uuid.uuid4().hex}"}
            )
            ids.append(response.json()["id"])
            return response

        async def get(index: int) -> httpx.Response:
            return await c.get(f"/jobs/{ids[index % len(ids)]}")

        for name, fn in (("POST /jobs", post), ("GET /jobs/{id}", get)):
            for i in range(min(5, n)):
                (await fn(i)).raise_for_status()
            seconds, sizes = [], []
            for i in range(n):
                started = time.perf_counter()
                response = await fn(i)
                seconds.append(time.perf_counter() - started)
                response.raise_for_status()
                sizes.append(len(response.content))
            result[name] = {
                **latency_summary(seconds),
                "response_bytes_mean": round(statistics.fmean(sizes)),
            }
    return result


# ---------------------------------------------------------------------------------------------
# submit to first step


def purge_queue(engine: Engine) -> int:
    """Drop every queued message and cancel the jobs still queued in SQL; returns their count."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    with Session(engine) as session:
        result = session.execute(
            update(Job)
            .where(col(Job.state) == JobState.QUEUED.value)
            .values(state=JobState.CANCELLED.value, finished_at=utcnow())
        )
        session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]


def worker_announced(engine: Engine) -> bool:
    with Session(engine) as session:
        return (
            session.exec(select(WorkerNode).where(WorkerNode.name == WORKER_NAME)).first()
            is not None
        )


def submit_to_first_step(
    client: httpx.Client, dataset_id: str, run: int, timeout: float
) -> dict[str, Any]:
    overrides = {
        "training_args.max_steps": 4,
        "training_args.logging_steps": 1,
        "training_args.eval_strategy": "no",
    }
    sent = time.time()
    response = client.post(
        "/jobs",
        json=job_body(dataset_id, overrides),
        headers={"Idempotency-Key": f"api-bench-first-step-{run}-{uuid.uuid4().hex}"},
    )
    submitted = time.time()
    response.raise_for_status()
    job_id = response.json()["id"]
    seen: dict[str, float] = {}
    events: list[dict[str, Any]] = []
    job: dict[str, Any] = response.json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] != "queued":
            seen.setdefault("running", time.time())
        events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        kinds = {e["kind"] for e in events}
        if "started" in kinds:
            seen.setdefault("started", time.time())
        if "step" in kinds:
            seen["step"] = time.time()
            break
        if job["state"] in TERMINAL:
            break
        time.sleep(POLL_S)
    started = next((e for e in events if e["kind"] == "started"), None)
    step = next((e for e in events if e["kind"] == "step"), None)
    final = wait_for(
        lambda: (j := client.get(f"/jobs/{job_id}").json())["state"] in TERMINAL and j,
        timeout,
        f"job {job_id} to finish",
    )
    claim_at = parse_time(job.get("started_at"))
    started_at = float(started["data"]["time"]) if started else None
    step_at = float(step["data"]["time"]) if step else None
    step_recorded_at = parse_time(step["created_at"]) if step else None

    def span(a: float | None, b: float | None) -> float | None:
        return round(b - a, 3) if a is not None and b is not None else None

    result = {
        "job_id": job_id,
        "post_latency_ms": round(1000 * (submitted - sent), 2),
        "final_state": final["state"],
        "final_error": final.get("error"),
        "submit_to_first_step_visible_s": span(submitted, seen.get("step")),
        "split_s": {
            "submit_to_claim": span(submitted, claim_at),
            "claim_to_started_event": span(claim_at, started_at),
            "started_event_to_first_step": span(started_at, step_at),
            "first_step_to_recorded_in_sql": span(step_at, step_recorded_at),
            "recorded_to_visible_via_api": span(step_recorded_at, seen.get("step")),
        },
        "client_observed_s": {
            "running": span(submitted, seen.get("running")),
            "started_event": span(submitted, seen.get("started")),
            "first_step": span(submitted, seen.get("step")),
        },
    }
    print(
        f"  run {run}: submit -> first step visible {result['submit_to_first_step_visible_s']} s"
        f" (split {result['split_s']}), job {final['state']}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# tables


def tables(result: dict[str, Any]) -> str:
    store = result["store"]
    lines = [
        f"Store: {store}; {result['device']['cpu']}, {result['device']['cores']} cores; "
        f"{result['date']}",
        "",
        "| store | endpoint | clients | requests | errors | req/s | p50 ms | p90 ms | p99 ms "
        "| max ms | in-app mean ms | API CPU ms/req | client CPU ms/req | machine CPU ms/req "
        "| p99 <= 50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for load in result["load"]:
        cpu = load["cpu_ms_per_request"]
        ok = (
            "-"
            if load["clients"] == 1
            else ("yes" if load["p99_ms"] <= TARGET_P99_MS else "**no**")
        )
        lines.append(
            f"| {store} | {load['name']} | {load['clients']} | {load['requests']}"
            f"{' (time limit)' if load['stopped_by_time_limit'] else ''} "
            f"| {load['errors']} | {load['throughput_rps']} | {load['p50_ms']} | {load['p90_ms']} "
            f"| {load['p99_ms']} | {load['max_ms']} | {load['app_view'].get('mean_ms')} "
            f"| {cpu['api_process']} | {cpu['client_process']} | {cpu['machine_total']} | {ok} |"
        )
    if result.get("breakdown"):
        lines += ["", "| step (in-process, sequential) | POST /jobs ms | GET /jobs/{id} ms |"]
        lines.append("|---|---|---|")
        post = result["breakdown"]["post_jobs"]["ms_per_request"]
        get = result["breakdown"]["get_job"]["ms_per_request"]
        for name in list(post) + [k for k in get if k not in post]:
            lines.append(f"| {name} | {post.get(name, '')} | {get.get(name, '')} |")
        asgi_post = result["breakdown"]["post_jobs"]["through_asgi_ms"]
        asgi_get = result["breakdown"]["get_job"]["through_asgi_ms"]
        lines.append(
            f"| whole request through the app in-process (ASGI, no uvicorn), mean "
            f"| {asgi_post['mean_ms']} | {asgi_get['mean_ms']} |"
        )
        lines.append(
            f"| SQL statements per request | "
            f"{result['breakdown']['post_jobs']['sql_statements_per_request']} | "
            f"{result['breakdown']['get_job']['sql_statements_per_request']} |"
        )
    first = result.get("first_step")
    if first:
        lines += [
            "",
            "| store | run | submit → first step visible (s) | submit → claim | claim → started "
            "| started → first step | step → in SQL | in SQL → seen via API | job |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, run in enumerate(first["runs"], 1):
            s = run["split_s"]
            lines.append(
                f"| {store} | {i} | {run['submit_to_first_step_visible_s']} "
                f"| {s['submit_to_claim']} | {s['claim_to_started_event']} "
                f"| {s['started_event_to_first_step']} | {s['first_step_to_recorded_in_sql']} "
                f"| {s['recorded_to_visible_via_api']} | {run['final_state']} |"
            )
        median = first["median_s"]
        verdict = "" if median is None else ("<= 30 s: yes" if median <= 30 else "**> 30 s**")
        lines.append(f"| {store} | **median** | **{first['median_s']}** | | | | | | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def run_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from trainer.tiny import build_tiny_model

    home = work / "home"
    home.mkdir()
    logs = work / "logs"
    logs.mkdir()
    started = time.monotonic()
    model_dir = build_tiny_model(work / "glm-4-tiny", hidden_size=128)
    print(f"tiny model built in {time.monotonic() - started:.1f} s", flush=True)
    redis.Redis.from_url(REDIS_URL).flushdb()
    api: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    with throwaway_store(args.store, home) as database_url:
        env = service_env(home, database_url, model_dir)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        engine = make_engine(database_url)
        result: dict[str, Any] = {
            "store": args.store,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "device": device(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "versions": versions(args.store),
            "settings": {
                "clients": args.clients,
                "requests": args.requests,
                "time_limit_s": args.time_limit,
                "unloaded_requests": args.unloaded_requests,
                "breakdown_requests": args.breakdown_requests,
                "first_step_runs": args.runs,
                "database": "throw-away PostgreSQL database on 127.0.0.1:5432"
                if args.store == "postgresql"
                else "temporary SQLite file (WAL)",
                "broker": REDIS_URL,
                "api_command": " ".join(api_command(port)[1:]),
                "worker_command": " ".join(worker_command()[1:]),
                "client": "asyncio + one httpx.AsyncClient (one keep-alive connection) per "
                "client, closed loop, in one process on the same machine",
                "job_body": job_body("<dataset>"),
                "first_step_overrides": {
                    "training_args.max_steps": 4,
                    "training_args.logging_steps": 1,
                    "training_args.eval_strategy": "no",
                },
                "tiny_model": {"hidden_size": 128},
            },
        }
        try:
            api = start(api_command(port), env, logs / "api.log")
            with httpx.Client(base_url=base_url, timeout=60) as client:
                try:
                    wait_for(lambda: api_ready(client), 120, "the API's /readyz")
                except TimeoutError:
                    print(tail(logs / "api.log"), file=sys.stderr)
                    raise
                rows = DEMO_TRAIN.read_bytes().splitlines(keepends=True)[:8]
                upload = client.post(
                    "/datasets",
                    files={"file": ("train.jsonl", b"".join(rows), "application/jsonl")},
                )
                upload.raise_for_status()
                dataset_id = upload.json()["id"]
                if not upload.json().get("valid", True):
                    raise SystemExit(f"the bench dataset did not validate: {upload.text[:500]}")
                result["load"] = phases(args, base_url, api.pid, dataset_id)
                if args.breakdown_requests:
                    print("in-process breakdown ...", flush=True)
                    settings = Settings(
                        home=home,
                        database_url=database_url,
                        broker_url=REDIS_URL,
                        models={MODEL_NAME: BaseModelEntry(path=model_dir)},
                    )
                    result["breakdown"] = breakdown(settings, dataset_id, args.breakdown_requests)
                if args.runs:
                    print("submit to first step ...", flush=True)
                    purged = purge_queue(engine)
                    worker = start(worker_command(), env, logs / "worker.log")
                    warm_started = time.monotonic()
                    try:
                        wait_for(lambda: worker_announced(engine), 120, "the worker", 0.5)
                    except TimeoutError:
                        print(tail(logs / "worker.log"), file=sys.stderr)
                        raise
                    ready_s = time.monotonic() - warm_started
                    time.sleep(1.0)  # let the worker settle into its consume loop
                    runs = [
                        submit_to_first_step(client, dataset_id, i, args.first_step_timeout)
                        for i in range(1, args.runs + 1)
                    ]
                    visible = [
                        r["submit_to_first_step_visible_s"]
                        for r in runs
                        if r["submit_to_first_step_visible_s"] is not None
                    ]
                    result["first_step"] = {
                        "purged_queued_jobs": purged,
                        "worker_ready_s": round(ready_s, 1),
                        "runs": runs,
                        "median_s": round(statistics.median(visible), 3) if visible else None,
                        "target_s": 30,
                    }
                    if any(r["final_state"] != "succeeded" for r in runs):
                        print(tail(logs / "worker.log"), file=sys.stderr)
        finally:
            stop(worker)
            stop(api)
            engine.dispose()
            redis.Redis.from_url(REDIS_URL).flushdb()
    return result


def phases(args: argparse.Namespace, base_url: str, api_pid: int, dataset_id: str) -> list[Any]:
    body = job_body(dataset_id)
    ids: list[str] = []

    async def post(client: httpx.AsyncClient, _index: int) -> httpx.Response:
        response = await client.post(
            "/jobs", json=body, headers={"Idempotency-Key": f"api-bench-{uuid.uuid4().hex}"}
        )
        if response.status_code == 201:
            ids.append(response.json()["id"])
        return response

    async def get(client: httpx.AsyncClient, index: int) -> httpx.Response:
        return await client.get(f"/jobs/{ids[index % len(ids)]}")

    loads = []
    for name, fn, route in (
        ("POST /jobs", post, ("POST", "/jobs")),
        ("GET /jobs/{id}", get, ("GET", "/jobs/{job_id}")),
    ):
        if not ids and fn is get:
            raise SystemExit("no job was created; nothing to GET")
        print(f"{name} ...", flush=True)
        for clients, requests in ((1, args.unloaded_requests), (args.clients, args.requests)):
            if requests <= 0:
                continue
            load = run_load(
                name=name,
                base_url=base_url,
                api_pid=api_pid,
                clients=clients,
                requests=requests,
                time_limit=args.time_limit,
                request=fn,
                route=route,
            )
            loads.append(load.summary())
    return loads


def write_result(out: Path, result: dict[str, Any]) -> None:
    existing: dict[str, Any] = {}
    if out.exists():
        with contextlib.suppress(json.JSONDecodeError):
            existing = json.loads(out.read_text())
    existing[result["store"]] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(existing, indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per loaded phase")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per phase")
    parser.add_argument(
        "--unloaded-requests", type=int, default=200, help="one-client reference; 0 skips"
    )
    parser.add_argument(
        "--breakdown-requests", type=int, default=100, help="in-process breakdown; 0 skips"
    )
    parser.add_argument("--runs", type=int, default=3, help="submit-to-first-step runs; 0 skips")
    parser.add_argument("--first-step-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_bench.json")
    args = parser.parse_args(argv)
    wall = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="glmft-api-bench-"))
    try:
        result = run_bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["bench_wall_s"] = round(time.monotonic() - wall, 1)
    write_result(args.out, result)
    print()
    print(tables(result))
    print(f"\nwrote {args.out} (bench took {result['bench_wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
