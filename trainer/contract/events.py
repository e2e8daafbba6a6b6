"""The trainer's events: one pydantic model per kind, one JSON object per ``events.jsonl`` line.

The trainer (rank 0) writes them through :class:`EventLog`; the worker reads each line back with
:func:`parse_event` into the :data:`TrainerEvent` union, discriminated by ``event``. Models allow
extra fields, so a worker keeps (and stores) what a newer trainer adds. Lines that are not one of
these kinds, or not of its shape, come back as :class:`UnknownEvent`: stored, never interpreted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from trainer.contract.layout import EVENTS_FILE


def _now() -> float:
    return round(time.time(), 3)


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    time: float = Field(default_factory=_now, description="seconds since the epoch")


class StartedEvent(_Event):
    """Training begins (after data, model and memory plan are set up)."""

    event: Literal["started"] = "started"
    method: str
    world_size: int
    max_steps: int | None = None
    resume_from: str | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    device: str | None = None
    train_conversations: int | None = None
    memory: dict[str, Any] = Field(default_factory=dict)
    attention: str | None = None
    compiled_layers: int = 0


class StepEvent(_Event):
    """One logged training step (every ``logging_steps``)."""

    event: Literal["step"] = "step"
    step: int
    loss: float
    learning_rate: float | None = None
    grad_norm: float | None = None
    epoch: float | None = None
    tokens_per_second: float | None = Field(
        default=None, description="non-pad input tokens per second, all ranks"
    )
    trained_tokens: int | None = Field(
        default=None, description="non-pad input tokens of all ranks trained on so far"
    )


class EvalEvent(_Event):
    """Metrics of one evaluation (``rouge-1``, ``rouge-2``, ``rouge-l``, ``bleu-4``, loss, ...)."""

    event: Literal["eval"] = "eval"
    step: int
    split: str = "validation"  # or "test"
    metrics: dict[str, Any] = Field(default_factory=dict)


class CheckpointEvent(_Event):
    """A complete checkpoint (its metadata written last)."""

    event: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str
    bytes: int


class CompileEvent(_Event):
    """With ``compile: true``, at the end of training: what dynamo compiled."""

    event: Literal["compile"] = "compile"
    layers: int
    frames: int | None = Field(default=None, description="compiled frames: >1 is a recompile")
    graphs: int | None = None
    graph_breaks: int | None = None
    seconds: float | None = None


class StatusEvent(_Event):
    """The run's end: ``succeeded``, or ``failed`` with a code and message."""

    event: Literal["status"] = "status"
    status: Literal["succeeded", "failed"]
    code: str | None = None
    message: str | None = None
    user_error: bool | None = Field(default=None, description="the input was at fault")
    step: int | None = Field(default=None, description="where it stopped, when known")


TrainerEvent = Annotated[
    StartedEvent | StepEvent | EvalEvent | CheckpointEvent | CompileEvent | StatusEvent,
    Field(discriminator="event"),
]
EVENT_TYPES: tuple[type[_Event], ...] = (
    StartedEvent,
    StepEvent,
    EvalEvent,
    CheckpointEvent,
    CompileEvent,
    StatusEvent,
)
_ADAPTER: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)


class UnknownEvent(BaseModel):
    """A line that is no :data:`TrainerEvent`: its kind (``unknown`` if none) and contents."""

    model_config = ConfigDict(frozen=True)

    event: str
    raw: dict[str, Any]
    error: str


def parse_event(raw: dict[str, Any]) -> TrainerEvent | UnknownEvent:
    """The typed event of one parsed line; never raises."""
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return UnknownEvent(
            event=str(raw.get("event", "unknown")), raw=raw, error=f"{where}: {first['msg']}"
        )


def event_data(event: TrainerEvent | UnknownEvent) -> dict[str, Any]:
    """The event as a JSON object (an unknown one as it was read)."""
    if isinstance(event, UnknownEvent):
        return event.raw
    data: dict[str, Any] = event.model_dump(mode="json")
    return data


class EventLog:
    """Appends events to ``<output_dir>/events.jsonl``; a no-op on ranks other than 0."""

    def __init__(self, output_dir: Path, *, enabled: bool = True) -> None:
        self.path = output_dir / EVENTS_FILE
        self.enabled = enabled
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: TrainerEvent) -> None:
        if not self.enabled:
            return
        data = event.model_dump()
        record = {"event": data.pop("event"), **data}  # the kind first, for people reading it
        line = json.dumps(record, ensure_ascii=False, default=_jsonable)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_events(output_dir: Path) -> list[dict[str, Any]]:
    """Every event of ``<output_dir>/events.jsonl`` as written (for tools and tests)."""
    path = output_dir / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy and torch scalars in metrics
        return value.item()
    return str(value)
