"""The run contract: what the API, the worker and the trainer agree on about one training run.

Torch-free, so every box imports it (ARCHITECTURE.md, "One run contract"):

* :mod:`trainer.contract.layout`: the job directory and every file name in it;
* :mod:`trainer.contract.run_config`: the resolved config, produced at admission, written by
  the worker verbatim, read by the trainer unchanged; the shipped DeepSpeed configs;
* :mod:`trainer.contract.command`: the trainer's command line (:class:`TrainerCommand`, with a
  typed :class:`Resume`);
* :mod:`trainer.contract.events`: one model per event kind the trainer writes to
  ``events.jsonl``, and the :data:`TrainerEvent` union the worker parses them into.

It lives in ``trainer`` because the trainer imports nothing of the service (the other boxes may
import the trainer's torch-free modules).
"""

from trainer.contract.command import Resume, TrainerArgs, TrainerCommand
from trainer.contract.events import (
    EVENT_TYPES,
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
from trainer.contract.layout import JobDir
from trainer.contract.run_config import SHIPPED_DEEPSPEED, run_config

__all__ = [
    "EVENT_TYPES",
    "SHIPPED_DEEPSPEED",
    "CheckpointEvent",
    "CompileEvent",
    "EvalEvent",
    "EventLog",
    "JobDir",
    "Resume",
    "StartedEvent",
    "StatusEvent",
    "StepEvent",
    "TrainerArgs",
    "TrainerCommand",
    "TrainerEvent",
    "UnknownEvent",
    "parse_event",
    "run_config",
]
