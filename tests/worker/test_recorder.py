"""Events and the offset that says how far they are stored commit together, so a new attempt
picks up exactly where a dead worker stopped recording: nothing lost, nothing stored twice."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from core.jobs import JobState
from core.models import Checkpoint, Dataset, Job, JobEvent
from worker.events_tail import EventTail
from worker.recorder import record_events


def _job(session: Session) -> Job:
    dataset = Dataset(
        tenant_id="t", filename="d.jsonl", path="/d", bytes=1, sha256="0" * 64, valid=True
    )
    session.add(dataset)
    session.commit()
    job = Job(
        tenant_id="t",
        state=JobState.RUNNING.value,
        model="m",
        method="lora",
        training_dataset_id=dataset.id,
    )
    session.add(job)
    session.commit()
    return job


def _append(path: Path, *events: dict[str, object]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in events)


def test_a_new_attempt_records_what_a_dead_worker_left_unread(
    engine: Engine, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    with Session(engine, expire_on_commit=False) as session:
        job = _job(session)
        _append(events, {"event": "started", "max_steps": 6}, {"event": "step", "step": 2})
        first = EventTail(events, offset=job.events_offset)
        record_events(session, job, first.read_new(), offset=first.offset)
        # the worker dies here; its trainer goes on writing
        _append(
            events,
            {"event": "step", "step": 4},
            {"event": "checkpoint", "step": 4, "path": "/c/4", "bytes": 1},
        )
    with Session(engine) as session:
        job = session.exec(select(Job)).one()
        assert job.step == 2 and job.max_steps == 6
        second = EventTail(events, offset=job.events_offset)
        record_events(session, job, second.read_new(), offset=second.offset)
        job = session.exec(select(Job)).one()
        kinds = [e.kind for e in session.exec(select(JobEvent).order_by(JobEvent.id)).all()]
        steps = [c.step for c in session.exec(select(Checkpoint)).all()]
    assert kinds == ["started", "step", "step", "checkpoint"]
    assert job.step == 4 and steps == [4] and job.events_offset == events.stat().st_size


def test_the_compile_report_is_summarised(engine: Engine, tmp_path: Path) -> None:
    """A compiled run's first step waits for the compile: the event says how long it took."""
    stats = {"layers": 40, "frames": 1, "graphs": 1, "graph_breaks": 0, "seconds": 68.2}
    with Session(engine) as session:
        job = _job(session)
        record_events(session, job, [{"event": "compile", **stats}], offset=1)
        event = session.exec(select(JobEvent).where(JobEvent.kind == "compile")).one()
        assert (
            event.message
            == "compiled 40 decoder layers in 68.2 s (1 compiled frames, 0 graph breaks)"
        )
        assert event.data["seconds"] == 68.2
