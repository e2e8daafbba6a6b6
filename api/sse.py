"""Server-Sent Events that follow a job live, polling SQL (the store is the truth).

Queries run in the threadpool and waits are ``anyio.sleep``, so an open stream never blocks
the event loop. The stream ends once the job is finished and every event has been sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from api.schemas.jobs import EventPublic
from core.jobs import TERMINAL
from core.models import Job, JobEvent

POLL_S = 0.5
KEEPALIVE_S = 15.0
BATCH = 500


def _poll(engine: Engine, job_id: str, after: int) -> tuple[str | None, list[JobEvent]]:
    # the state is read before the events: events written before it turned terminal are seen
    with Session(engine) as session:
        job = session.get(Job, job_id)
        state = job.state if job is not None else None
        statement = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, col(JobEvent.id) > after)
            .order_by(col(JobEvent.id))
            .limit(BATCH)
        )
        return state, list(session.exec(statement).all())


def format_event(event_id: int | None, kind: str, data: dict[str, Any]) -> str:
    """One SSE frame (``id:``/``event:``/``data:`` lines, blank line)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {' '.join(kind.split())}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


async def job_event_stream(
    engine: Engine, job_id: str, after: int, poll_s: float = POLL_S
) -> AsyncIterator[str]:
    """Frames for every event of ``job_id`` after ``after``, then an ``end`` frame."""
    yield f"retry: {int(poll_s * 4000)}\n\n"
    last, quiet_since = after, time.monotonic()
    while True:
        state, events = await run_in_threadpool(_poll, engine, job_id, last)
        for event in events:
            payload = EventPublic.model_validate(event, from_attributes=True)
            yield format_event(event.id, event.kind, payload.model_dump(mode="json"))
            last = event.id or last
        if state is None or (state in TERMINAL and len(events) < BATCH):
            yield format_event(None, "end", {"job_id": job_id, "state": state})
            return
        if events:
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await anyio.sleep(poll_s)
