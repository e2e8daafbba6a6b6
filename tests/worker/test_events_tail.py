"""EventTail: incremental, resumable reading of the trainer's events.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from trainer.contract.events import CheckpointEvent, EventLog, StartedEvent, StepEvent
from worker.events_tail import EventTail


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def line(**fields: object) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def test_missing_file_yields_nothing_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []
    assert tail.offset == 0
    append(path, line(event="started"))
    assert tail.read_new() == [{"event": "started"}]


def test_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    append(path, line(event="started") + line(event="step", step=1))
    assert [e["event"] for e in tail.read_new()] == ["started", "step"]
    assert tail.read_new() == []
    partial = line(event="step", step=2)
    append(path, partial[:10])
    assert tail.read_new() == []  # still being written
    offset = tail.offset
    append(path, partial[10:-1])
    assert tail.read_new() == []
    assert tail.offset == offset
    append(path, b"\n" + line(event="status", status="succeeded"))
    assert tail.read_new() == [
        {"event": "step", "step": 2},
        {"event": "status", "status": "succeeded"},
    ]
    assert tail.offset == path.stat().st_size


def test_offset_resumes_where_a_previous_reader_stopped(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.emit(StartedEvent(method="lora", world_size=1))
    first = EventTail(log.path)
    assert [e["event"] for e in first.read_new()] == ["started"]
    log.emit(StepEvent(step=1, loss=2.5))
    log.emit(CheckpointEvent(step=1, path="/x", bytes=3))
    resumed = EventTail(log.path, offset=first.offset)
    assert [e["event"] for e in resumed.read_new()] == ["step", "checkpoint"]
    assert resumed.offset == log.path.stat().st_size


def test_malformed_lines_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.jsonl"
    append(
        path,
        line(event="a")
        + b"{not json\n"
        + b"\n"
        + b"[1, 2]\n"
        + b'{"event": "\xff\xfe"}\n'
        + b"\r\n"
        + line(event="b"),
    )
    tail = EventTail(path)
    with caplog.at_level(logging.WARNING, logger="worker.events_tail"):
        assert tail.read_new() == [{"event": "a"}, {"event": "b"}]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    assert all("events.jsonl" in w and "byte" in w for w in warnings)
    assert tail.offset == path.stat().st_size


def test_a_replaced_shorter_file_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append(path, line(event="started", n=1) + line(event="step", step=1))
    tail = EventTail(path)
    assert len(tail.read_new()) == 2
    path.write_bytes(line(event="started"))
    assert tail.read_new() == [{"event": "started"}]


def test_negative_offset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="offset"):
        EventTail(tmp_path / "events.jsonl", offset=-1)
