"""What a job produces: events (paged or live SSE), metrics, checkpoints, the trainer log."""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlmodel import col, select

from api.deps import EngineDep, JobDep, SessionDep, SettingsDep
from api.schemas.common import ListOf, Page, error_responses, json_error_responses
from api.schemas.jobs import CheckpointPublic, EventPublic, MetricPublic
from api.sse import SSE_DOC, after_id, event_page, job_event_stream, live_stream
from core.models import Checkpoint, JobEvent, Metric
from trainer.config_rules import INT_MAX
from trainer.contract.layout import JobDir

router = APIRouter(prefix="/jobs/{job_id}", tags=["jobs"])
_TAIL_BLOCK = 64 * 1024
# CSI (colours, cursor moves), OSC (titles, links) and the other two-byte escapes
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


@router.get(
    "/events",
    response_model=Page[EventPublic],
    responses={**SSE_DOC, **error_responses(404)},
)
def get_events(
    job: JobDep,
    session: SessionDep,
    engine: EngineDep,
    request: Request,
    after: Annotated[
        int | None, Query(ge=0, le=INT_MAX, description="Events with a larger id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Page[EventPublic] | StreamingResponse:
    """The job's events in order; `Accept: text/event-stream` follows the job live."""
    start = after_id(after, last_event_id)
    stream = live_stream(request, session, partial(job_event_stream, engine, job.id, start))
    if stream is not None:
        return stream
    return event_page(session, JobEvent, JobEvent.job_id == job.id, start, limit, EventPublic)


@router.get("/metrics", response_model=Page[MetricPublic], responses=error_responses(404))
def get_metrics(
    job: JobDep,
    session: SessionDep,
    split: Annotated[str | None, Query(description="train | validation | test")] = None,
    name: Annotated[str | None, Query(examples=["loss"])] = None,
    after: Annotated[
        int | None, Query(ge=0, le=INT_MAX, description="Metrics with a larger id.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> Page[MetricPublic]:
    """The job's recorded metrics in the order they were written."""
    statement = select(Metric).where(Metric.job_id == job.id, col(Metric.id) > (after or 0))
    if split:
        statement = statement.where(Metric.split == split)
    if name:
        statement = statement.where(Metric.name == name)
    rows = session.exec(statement.order_by(col(Metric.id)).limit(limit + 1)).all()
    page = [MetricPublic.model_validate(m, from_attributes=True) for m in rows[:limit]]
    has_more = len(rows) > limit
    return Page(data=page, has_more=has_more, next_cursor=str(page[-1].id) if has_more else None)


@router.get("/checkpoints", response_model=ListOf[CheckpointPublic], responses=error_responses(404))
def get_checkpoints(job: JobDep, session: SessionDep) -> ListOf[CheckpointPublic]:
    """The job's recorded checkpoints, by step."""
    statement = select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(col(Checkpoint.step))
    rows = session.exec(statement).all()
    return ListOf(data=[CheckpointPublic.model_validate(c, from_attributes=True) for c in rows])


def readable_line(line: str) -> str:
    """A terminal line as a person last saw it: carriage-return redraws (tqdm's progress bars)
    collapsed to the final frame, ANSI escapes removed."""
    frames = [frame for frame in _ANSI.sub("", line).split("\r") if frame.strip()]
    return frames[-1].rstrip() if frames else ""


def tail_lines(path: Path, count: int) -> str:
    """The last ``count`` lines of ``path`` (read backwards in blocks; '' if absent), each as
    :func:`readable_line` shows it; the file itself keeps every byte."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return ""
    with handle:
        end = handle.seek(0, os.SEEK_END)
        data, position = b"", end
        while position > 0 and data.count(b"\n") <= count:
            position = max(0, position - _TAIL_BLOCK)
            handle.seek(position)
            data = handle.read(end - position)
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the file ends with a newline
        lines.pop()
    shown = [readable_line(line) for line in lines[-count:]]
    return "\n".join(shown) + ("\n" if shown else "")


@router.get(
    "/logs",
    response_class=PlainTextResponse,
    responses={200: {"description": "The log's last lines."}, **json_error_responses(404)},
)
def get_logs(
    job: JobDep,
    settings: SettingsDep,
    tail: Annotated[int, Query(ge=1, le=10_000, description="How many lines.")] = 200,
) -> PlainTextResponse:
    """The tail of the trainer's log (empty until the job has started), progress-bar redraws
    collapsed and terminal colours removed."""
    path = JobDir.for_job(settings.artifacts, job.id).log
    return PlainTextResponse(tail_lines(path, tail))
