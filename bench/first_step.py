"""The API bench's submit-to-first-step phase: purge the queue, wait for the worker to announce
itself, then time one tiny job from ``POST /jobs`` until its first ``step`` event is visible."""

from __future__ import annotations

import datetime as dt
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from service_fixture import REDIS_URL, WORKER_NAME, job_body, wait_for
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.jobs import JobState  # noqa: E402
from core.models import Job, WorkerNode, utcnow  # noqa: E402

POLL_S = 0.1
TERMINAL = {"succeeded", "failed", "cancelled"}


def parse_time(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


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
