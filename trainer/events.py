"""The trainer's event stream: JSON lines appended to ``events.jsonl`` in the output directory.

This file is the trainer's whole interface to the worker (ARCHITECTURE.md decision 6). Only rank 0
writes. Every line is one object with ``event`` and ``time`` plus:

==============  ===============================================================================
``started``     ``method``, ``world_size``, ``max_steps``, ``resume_from``, ``trainable_params``,
                ``total_params``, ``device``, ``train_conversations``, ``memory``, ``attention``,
                ``compiled_layers`` (0 without ``compile: true``)
``step``        ``step``, ``loss``, ``learning_rate``, ``grad_norm``, ``epoch``,
                ``tokens_per_second`` (non-pad input tokens, all ranks), ``trained_tokens``
                (non-pad input tokens of all ranks trained on so far)
``eval``        ``step``, ``metrics`` (``rouge-1``, ``rouge-2``, ``rouge-l``, ``bleu-4``, ...)
``checkpoint``  ``step``, ``path``, ``bytes``
``compile``     at the end of training with ``compile: true``: ``layers``, ``frames`` (dynamo's
                compiled frames: more than one is a recompile), ``graphs``, ``graph_breaks``,
                ``seconds`` spent compiling
``status``      ``status`` = ``succeeded`` or ``failed``; on failure ``code`` and ``message``
==============  ===============================================================================
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Appends events to ``<output_dir>/events.jsonl``; a no-op on ranks other than 0."""

    def __init__(self, output_dir: Path, *, enabled: bool = True) -> None:
        self.path = output_dir / EVENTS_FILE
        self.enabled = enabled
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        line = json.dumps(record, ensure_ascii=False, default=_jsonable)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_events(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
