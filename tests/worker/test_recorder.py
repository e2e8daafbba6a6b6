"""Events and the offset that says how far they are stored commit together, so a new attempt
picks up exactly where a dead worker stopped recording: nothing lost, nothing stored twice."""

from __future__ import annotations

import typing
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from core.jobs import JobState
from core.models import Checkpoint, Dataset, Job, JobEvent, Metric
from trainer.contract.events import (
    CheckpointEvent,
    CompileEvent,
    EvalEvent,
    EventLog,
    StartedEvent,
    StatusEvent,
    StepEvent,
    TrainerEvent,
    UnknownEvent,
    parse_event,
)
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


def _append(path: Path, *events: TrainerEvent) -> None:
    log = EventLog(path.parent)
    for event in events:
        log.emit(event)


def _read(tail: EventTail) -> list[TrainerEvent | UnknownEvent]:
    return [parse_event(raw) for raw in tail.read_new()]


def test_a_new_attempt_records_what_a_dead_worker_left_unread(
    engine: Engine, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    with Session(engine, expire_on_commit=False) as session:
        job = _job(session)
        _append(
            events,
            StartedEvent(method="lora", world_size=1, max_steps=6),
            StepEvent(step=2, loss=1.5),
        )
        first = EventTail(events, offset=job.events_offset)
        record_events(session, job, _read(first), offset=first.offset)
        # the worker dies here; its trainer goes on writing
        _append(
            events,
            StepEvent(step=4, loss=1.2),
            CheckpointEvent(step=4, path="/c/4", bytes=1),
        )
    with Session(engine) as session:
        job = session.exec(select(Job)).one()
        assert job.step == 2 and job.max_steps == 6
        second = EventTail(events, offset=job.events_offset)
        record_events(session, job, _read(second), offset=second.offset)
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
        record_events(session, job, [CompileEvent(**stats)], offset=1)
        event = session.exec(select(JobEvent).where(JobEvent.kind == "compile")).one()
        assert (
            event.message
            == "compiled 40 decoder layers in 68.2 s (1 compiled frames, 0 graph breaks)"
        )
        assert event.data["seconds"] == 68.2


def _one_of_each(tmp_path: Path) -> dict[type, TrainerEvent]:
    checkpoint = tmp_path / "output" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    return {
        StartedEvent: StartedEvent(method="lora", world_size=1, max_steps=8),
        StepEvent: StepEvent(step=2, loss=1.5, learning_rate=1e-4, tokens_per_second=10.0),
        EvalEvent: EvalEvent(step=2, metrics={"rouge-1": 12.5}),
        CheckpointEvent: CheckpointEvent(step=2, path=str(checkpoint), bytes=10),
        CompileEvent: CompileEvent(layers=2, frames=1, graphs=1, graph_breaks=0, seconds=1.0),
        StatusEvent: StatusEvent(status="failed", code="invalid_data", message="bad row"),
    }


def test_the_worker_records_every_event_kind_the_trainer_writes(
    engine: Engine, tmp_path: Path
) -> None:
    # given one event of every kind of the contract's union, written as the trainer writes them
    members = set(typing.get_args(typing.get_args(TrainerEvent)[0]))
    samples = _one_of_each(tmp_path)
    assert set(samples) == members
    events = tmp_path / "output" / "events.jsonl"
    _append(events, *samples.values())
    with Session(engine) as session:
        job = _job(session)
        # when the worker reads and records them
        tail = EventTail(events)
        parsed = _read(tail)
        assert record_events(session, job, parsed, offset=tail.offset)
        # then each came back as its own type and moved what it stands for
        assert [type(e) for e in parsed] == list(samples)
        rows = session.exec(select(JobEvent).order_by(JobEvent.id)).all()
        assert [r.kind for r in rows] == [cls.model_fields["event"].default for cls in samples]
        assert rows[-1].message == "trainer failed: invalid_data: bad row"
        job = session.exec(select(Job)).one()
        assert (job.max_steps, job.step) == (8, 2)
        metrics = {(m.split, m.name): m.value for m in session.exec(select(Metric)).all()}
        assert metrics[("train", "loss")] == 1.5
        assert metrics[("validation", "rouge-1")] == 12.5
        saved = session.exec(select(Checkpoint)).one()
        assert (saved.step, saved.bytes, saved.metrics) == (2, 10, {"rouge-1": 12.5})


def test_unknown_and_malformed_events_are_stored_but_move_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    # given a kind this worker does not know and a step line missing its loss
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"event": "profile", "ms": 3}\n{"event": "step", "step": 9}\nnot json\n[1]\n',
        encoding="utf-8",
    )
    with Session(engine) as session:
        job = _job(session)
        # when they are recorded
        tail = EventTail(events)
        parsed = _read(tail)
        assert record_events(session, job, parsed, offset=tail.offset)
        # then both are kept as written (the broken lines skipped) and the job did not move
        assert all(isinstance(e, UnknownEvent) for e in parsed)
        rows = session.exec(select(JobEvent)).all()
        assert [(r.kind, r.data) for r in rows] == [
            ("profile", {"event": "profile", "ms": 3}),
            ("step", {"event": "step", "step": 9}),
        ]
        assert session.exec(select(Job)).one().step == 0
        assert session.exec(select(Metric)).all() == []
