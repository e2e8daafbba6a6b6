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
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api_breakdown import breakdown  # noqa: E402
from first_step import purge_queue, submit_to_first_step, worker_announced  # noqa: E402
from load_client import run_load  # noqa: E402
from service_fixture import (  # noqa: E402
    MODEL_NAME,
    POSTGRES_ADMIN,
    REDIS_URL,
    api_command,
    api_ready,
    free_port,
    job_body,
    service_env,
    start,
    stop,
    tail,
    throwaway_store,
    wait_for,
    worker_command,
)

from core.db import make_engine  # noqa: E402
from core.settings import BaseModelEntry, Settings  # noqa: E402

DEMO_TRAIN = REPO / "trainer" / "assets" / "demo" / "train.jsonl"
TARGET_P99_MS = 50.0
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
                        allow_anonymous=True,
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
