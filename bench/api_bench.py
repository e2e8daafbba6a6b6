"""API benchmark: ``POST /jobs`` and ``GET /jobs/{id}`` under 50 concurrent clients, beside a
minimal FastAPI app answering the same requests from the same table, and the time from submit
to the trainer's first step on a warm worker.

Everything real and on loopback: the API under ``uvicorn --factory api.main:create_app``
(``--workers`` processes, default one per core, ``--loop uvloop --http httptools``: the setting
``glmft up`` and the deploy files use), Redis as the broker (``GLMFT_BENCH_REDIS``, default
127.0.0.1:6379 db 12, flushed at start and end), and as the store a throw-away PostgreSQL
database on 127.0.0.1:5432 (user ``postgres``, dropped at the end) or a temporary SQLite file,
migrated before the server starts. The tiny GLM-4 is built and registered as ``glm-4-tiny``.

Phases (``--client wrk``, the default when ``wrk`` is installed; bench/wrk_load.py):

1. ``POST /jobs`` from ``--clients`` wrk connections (closed loop: a connection sends its next
   request when the previous one answered) for ``--duration`` seconds, each request with its
   own ``Idempotency-Key``; before it a one-client reference for ``--unloaded-duration``.
2. ``GET /jobs/{id}`` the same way over the ids phase 1 created.
3. The baseline (``bench/minimal_app.py``, unless ``--no-baseline``): the same two phases, GET
   first, against a minimal FastAPI app under the same uvicorn options.
   Per phase: latency p50/p90/p99/max, throughput, errors (non-2xx, socket errors, timeouts)
   and the CPU seconds of the server's process tree, of wrk and of the whole machine.
4. In-process breakdown (no HTTP, one thread, sequential): the handler's steps timed one by one,
   with SQL statement time from SQLAlchemy cursor events.
5. Submit to first step: the queue of phases 1-4 is purged (Redis db flushed, their queued jobs
   marked cancelled in SQL), a Celery worker (``--pool=solo``) is started and waited for (warm),
   then ``--runs`` times: one tiny LoRA job (max_steps 4, logging_steps 1, eval off) is submitted
   and ``GET /jobs/{id}/events`` (and ``GET /jobs/{id}``) are polled every 0.1 s until a ``step``
   event shows; the next run starts when the job has finished.

With ``--client httpx`` phases 1-2 use asyncio httpx clients in this process instead (``--requests``
per phase or ``--time-limit``), with the app's own Prometheus histogram beside them; those clients
cost 4-5 ms of CPU per request, as much as the API, on the same cores.

``--api-dir`` serves another checkout of glmft (e.g. an older commit, for a before/after on the
same day and machine). Prints markdown tables and merges the results, under ``<store>`` or
``<store>_<label>``, into ``bench/results/api_bench.json``.

Run: ``.venv/bin/python bench/api_bench.py [--store postgresql|sqlite] [--workers N]
[--label after] [--runs 0 --breakdown-requests 0]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from api_bench_report import device, tables, versions  # noqa: E402
from api_breakdown import breakdown  # noqa: E402
from first_step import purge_queue, submit_to_first_step, worker_announced  # noqa: E402
from load_client import run_load  # noqa: E402
from service_fixture import (  # noqa: E402
    MODEL_NAME,
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
from wrk_load import WrkPhase, wrk_path  # noqa: E402

from core.db import make_engine, upgrade  # noqa: E402
from core.settings import BaseModelEntry, Settings  # noqa: E402

DEMO_TRAIN = REPO / "trainer" / "assets" / "demo" / "train.jsonl"
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
                "api_command": " ".join(api_command(port, **server_options(args))[1:]),
                "api_code": str(args.api_dir),
                "api_commit": git_commit(args.api_dir),
                "baseline_command": " ".join(
                    api_command(port, app=MINIMAL_APP, **server_options(args))[1:]
                )
                if args.baseline
                else None,
                "worker_command": " ".join(worker_command()[1:]),
                "client": "wrk -t1 -c<clients> (C, one thread, one keep-alive connection per "
                "client, closed loop; bench/wrk_load.py), on the same machine"
                if args.client == "wrk"
                else "asyncio + one httpx.AsyncClient (one keep-alive connection) per "
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
            # migrated before any server starts: several workers would race to migrate it
            upgrade(database_url)
            api_env = dict(env)
            if args.api_dir != REPO:  # the code under test lives elsewhere (e.g. an older commit)
                api_env["PYTHONPATH"] = str(args.api_dir)
            api = start(
                api_command(port, **server_options(args)),
                api_env,
                logs / "api.log",
                cwd=args.api_dir,
            )
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
                if args.client == "wrk":
                    result["load"], ids = wrk_phases(args, base_url, api.pid, dataset_id, engine)
                    if args.baseline:
                        result["baseline"] = minimal_phases(args, env, logs, dataset_id, ids)
                else:
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


MINIMAL_APP = "bench.minimal_app:create_app"


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": args.workers,
        "loop": args.loop,
        "http": args.http,
        "access_log": not args.no_access_log,
    }


def git_commit(where: Path) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or None


def created_ids(engine: Any, prefix: str) -> list[str]:
    """Ids of the jobs a POST phase created (their Idempotency-Keys start with ``prefix``)."""
    from sqlmodel import Session, col, select

    from core.models import Job

    with Session(engine) as session:
        rows = session.exec(
            select(Job.id).where(col(Job.idempotency_key).startswith(prefix)).order_by(Job.id)
        ).all()
    return list(rows)


def _print(load: dict[str, Any]) -> None:
    print(
        f"  {load['name']} x{load['clients']}: {load['requests']} requests, {load['errors']} "
        f"errors, {load['throughput_rps']} req/s, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} "
        f"ms, API CPU {load['cpu_ms_per_request']['api_process']} ms/req",
        flush=True,
    )


def _levels(args: argparse.Namespace) -> list[tuple[int, float]]:
    """(clients, seconds) of the wrk phases: the one-client reference, then the loaded one."""
    levels = [(1, args.unloaded_duration), (args.clients, args.duration)]
    return [(c, s) for c, s in levels if s > 0]


def wrk_phases(
    args: argparse.Namespace, base_url: str, api_pid: int, dataset_id: str, engine: Any
) -> tuple[list[Any], list[str]]:
    """POST /jobs, then GET /jobs/{id} over the jobs it created, each at 1 and ``--clients``
    clients driven by wrk. Returns the phases and the created ids."""
    body = json.dumps(job_body(dataset_id))
    prefix = f"api-bench-{uuid.uuid4().hex[:8]}-"
    loads = []
    print("POST /jobs ...", flush=True)
    for clients, seconds in _levels(args):
        phase = WrkPhase(
            "POST /jobs",
            "POST",
            "/jobs",
            clients,
            seconds,
            body=body,
            key_prefix=f"{prefix}{clients}-",
        )
        loads.append(phase.run(base_url, api_pid))
        _print(loads[-1])
    ids = created_ids(engine, prefix)
    if not ids:
        raise SystemExit("no job was created; nothing to GET")
    print("GET /jobs/{id} ...", flush=True)
    for clients, seconds in _levels(args):
        phase = WrkPhase("GET /jobs/{id}", "GET", "/jobs/", clients, seconds, ids=ids)
        loads.append(phase.run(base_url, api_pid))
        _print(loads[-1])
    return loads, ids


def minimal_phases(
    args: argparse.Namespace, env: dict[str, str], logs: Path, dataset_id: str, ids: list[str]
) -> list[Any]:
    """The same phases against ``bench/minimal_app.py`` (same server options, same clients):
    GET /jobs/{id} over the same rows first, then POST /jobs."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    print("minimal FastAPI app ...", flush=True)
    server = start(
        api_command(port, app=MINIMAL_APP, **server_options(args)), env, logs / "minimal.log"
    )
    try:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            wait_for(lambda: _answers(client), 60, "the minimal app")
        loads = []
        for clients, seconds in _levels(args):
            phase = WrkPhase("GET /jobs/{id}", "GET", "/jobs/", clients, seconds, ids=ids)
            loads.append(phase.run(base_url, server.pid))
            _print(loads[-1])
        body = json.dumps(job_body(dataset_id))
        for clients, seconds in _levels(args):
            phase = WrkPhase("POST /jobs", "POST", "/jobs", clients, seconds, body=body)
            loads.append(phase.run(base_url, server.pid))
            _print(loads[-1])
        return loads
    finally:
        stop(server)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


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
    existing[result["key"]] = result
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
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if wrk_path() else "httpx",
        help="load generator: wrk (C; default when installed) or asyncio httpx clients",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="uvicorn worker processes"
    )
    parser.add_argument("--loop", default="uvloop", help="uvicorn --loop (asyncio, uvloop)")
    parser.add_argument("--http", default="httptools", help="uvicorn --http (h11, httptools)")
    parser.add_argument("--no-access-log", action="store_true", help="uvicorn --no-access-log")
    parser.add_argument(
        "--api-dir", type=Path, default=REPO, help="the glmft code to serve (a git worktree)"
    )
    parser.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the minimal FastAPI app (bench/minimal_app.py; wrk only)",
    )
    parser.add_argument("--label", default="", help="the results' key: <store>[_<label>]")
    parser.add_argument("--duration", type=float, default=20.0, help="s per loaded wrk phase")
    parser.add_argument(
        "--unloaded-duration", type=float, default=5.0, help="s per one-client wrk phase; 0 skips"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_bench.json")
    args = parser.parse_args(argv)
    args.api_dir = args.api_dir.resolve()
    wall = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="glmft-api-bench-"))
    try:
        result = run_bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["bench_wall_s"] = round(time.monotonic() - wall, 1)
    result["key"] = f"{args.store}_{args.label}" if args.label else args.store
    write_result(args.out, result)
    print()
    print(tables(result))
    print(f"\nwrote {args.out} (bench took {result['bench_wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
