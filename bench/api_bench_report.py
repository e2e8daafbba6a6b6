"""The API bench's report: the machine and versions it ran on, and its tables in Markdown (the
figures of ``bench/results/api_bench.json``, as ``docs/benchmarks.md`` shows them)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import redis
from service_fixture import POSTGRES_ADMIN, REDIS_URL

TARGET_P99_MS = 50.0
VERSIONED_PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
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
    rows = [("glmft", load) for load in result["load"]]
    rows += [("minimal", load) for load in result.get("baseline", [])]
    for app, load in rows:
        cpu = load["cpu_ms_per_request"]
        in_app = load.get("app_view", {}).get("mean_ms", "-")
        ok = (
            "-"
            if load["clients"] == 1
            else ("yes" if load["p99_ms"] <= TARGET_P99_MS else "**no**")
        )
        lines.append(
            f"| {store} {app} | {load['name']} | {load['clients']} | {load['requests']}"
            f"{' (time limit)' if load['stopped_by_time_limit'] else ''} "
            f"| {load['errors']} | {load['throughput_rps']} | {load['p50_ms']} | {load['p90_ms']} "
            f"| {load['p99_ms']} | {load['max_ms']} | {in_app} "
            f"| {cpu['api_process']} | {cpu['client_process']} | {cpu['machine_total']} | {ok} |"
        )
    if result.get("baseline"):
        lines += ["", ratio_table(result)]
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


def ratio_table(result: dict[str, Any]) -> str:
    """glmft against the minimal FastAPI app, per endpoint at the loaded level."""
    lines = [
        "| endpoint | clients | API CPU ms/req glmft / minimal (ratio) | p50 ms glmft / minimal "
        "| p99 ms glmft / minimal | req/s glmft / minimal |",
        "|---|---|---|---|---|---|",
    ]
    minimal = {(b["name"], b["clients"]): b for b in result["baseline"]}
    for load in result["load"]:
        base = minimal.get((load["name"], load["clients"]))
        if base is None:
            continue
        ours = load["cpu_ms_per_request"]["api_process"]
        theirs = base["cpu_ms_per_request"]["api_process"]
        ratio = round(ours / theirs, 2) if theirs else None
        lines.append(
            f"| {load['name']} | {load['clients']} | {ours} / {theirs} ({ratio}x) "
            f"| {load['p50_ms']} / {base['p50_ms']} | {load['p99_ms']} / {base['p99_ms']} "
            f"| {load['throughput_rps']} / {base['throughput_rps']} |"
        )
    return "\n".join(lines)
