"""Server-Sent Events that follow a job or an evaluation live, polling SQL (the store is the
truth).

Queries run in the threadpool and waits are ``anyio.sleep``, so an open stream never blocks
the event loop. A stream ends once its job or evaluation is finished and every event has been
sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from api.schemas.common import Page
from api.schemas.evaluations import EvaluationEventPublic
from api.schemas.jobs import EventPublic
from core.evaluations import TERMINAL as EVALUATION_TERMINAL
from core.jobs import TERMINAL
from core.models import Evaluation, EvaluationEvent, Job, JobEvent

POLL_S = 0.5
KEEPALIVE_S = 15.0
BATCH = 500
P = TypeVar("P", bound=BaseModel)

#: OpenAPI for an events route that answers a page or, on request, a live stream.
SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of events, or with `Accept: text/event-stream` a live SSE stream "
        "(`id:` event id, `event:` kind, `data:` the event as JSON; a final `end` event).",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
#: ``(state of the followed object or None when gone, its events after an id)``
Poll = Callable[[int], tuple[str | None, list[Any]]]


def after_id(after: int | None, last_event_id: str | None) -> int:
    """Where a stream or page starts: ``after``, else a reconnecting client's Last-Event-ID."""
    if after is not None:
        return after
    if not (last_event_id and last_event_id.isdigit()):
        return 0
    return min(int(last_event_id), 2**31 - 1)  # ids are SQL integers


def live_stream(
    request: Request, session: Session, frames: Callable[[float], AsyncIterator[str]]
) -> StreamingResponse | None:
    """With ``Accept: text/event-stream``, the live stream of ``frames(poll_s)``; else None (the
    route answers a page). The request's session is closed: the stream polls with its own."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        return None
    poll_s = float(getattr(request.app.state, "sse_poll_s", POLL_S))
    session.close()
    return StreamingResponse(
        frames(poll_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def event_page(
    session: Session,
    model: type[JobEvent] | type[EvaluationEvent],
    owner: Any,
    start: int,
    limit: int,
    public: type[P],
) -> Page[P]:
    """The ``limit`` events after ``start`` whose ``owner`` column matches, as ``public``."""
    statement = (
        select(model).where(owner, col(model.id) > start).order_by(col(model.id)).limit(limit + 1)
    )
    rows = session.exec(statement).all()
    page = [public.model_validate(e, from_attributes=True) for e in rows[:limit]]
    has_more = len(rows) > limit
    cursor = str(page[-1].id) if has_more else None  # type: ignore[attr-defined]
    return Page(data=page, has_more=has_more, next_cursor=cursor)


def _poll_job(engine: Engine, job_id: str, after: int) -> tuple[str | None, list[Any]]:
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


def _poll_evaluation(
    engine: Engine, evaluation_id: str, after: int
) -> tuple[str | None, list[Any]]:
    with Session(engine) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        state = evaluation.state if evaluation is not None else None
        statement = (
            select(EvaluationEvent)
            .where(EvaluationEvent.evaluation_id == evaluation_id, col(EvaluationEvent.id) > after)
            .order_by(col(EvaluationEvent.id))
            .limit(BATCH)
        )
        return state, list(session.exec(statement).all())


def format_event(event_id: int | None, kind: str, data: dict[str, Any]) -> str:
    """One SSE frame (``id:``/``event:``/``data:`` lines, blank line)."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines.append(f"event: {' '.join(kind.split())}")
    lines.append(f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


async def follow(
    poll: Poll,
    after: int,
    poll_s: float,
    *,
    public: type[BaseModel],
    terminal: Collection[str],
    end: Callable[[str | None], dict[str, Any]],
) -> AsyncIterator[str]:
    """Frames for every event after ``after`` as ``public``, then an ``end`` frame once the
    followed object's state is in ``terminal`` (or it is gone)."""
    yield f"retry: {int(poll_s * 4000)}\n\n"
    last, quiet_since = after, time.monotonic()
    while True:
        state, events = await run_in_threadpool(poll, last)
        for event in events:
            payload = public.model_validate(event, from_attributes=True)
            yield format_event(event.id, event.kind, payload.model_dump(mode="json"))
            last = event.id or last
        if state is None or (state in terminal and len(events) < BATCH):
            yield format_event(None, "end", end(state))
            return
        if events:
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        await anyio.sleep(poll_s)


def job_event_stream(
    engine: Engine, job_id: str, after: int, poll_s: float = POLL_S
) -> AsyncIterator[str]:
    """Frames for every event of ``job_id`` after ``after``, then an ``end`` frame."""
    return follow(
        lambda last: _poll_job(engine, job_id, last),
        after,
        poll_s,
        public=EventPublic,
        terminal=TERMINAL,
        end=lambda state: {"job_id": job_id, "state": state},
    )


def evaluation_event_stream(
    engine: Engine, evaluation_id: str, after: int, poll_s: float = POLL_S
) -> AsyncIterator[str]:
    """Frames for every event of ``evaluation_id`` after ``after``, then an ``end`` frame."""
    return follow(
        lambda last: _poll_evaluation(engine, evaluation_id, last),
        after,
        poll_s,
        public=EvaluationEventPublic,
        terminal=EVALUATION_TERMINAL,
        end=lambda state: {"evaluation_id": evaluation_id, "state": state},
    )
