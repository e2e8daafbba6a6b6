"""Incremental reader of the trainer's ``events.jsonl`` (ARCHITECTURE.md decision 6).

The trainer appends one JSON object per line (``trainer.contract.events``). ``EventTail`` keeps a
byte offset into the file and returns only the complete lines written since the last call; the
caller persists ``offset`` (for example with the job row) and resumes with ``EventTail(path,
offset=N)`` after a restart, so no event is recorded twice or lost.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EventTail:
    """Reads new complete JSON lines from ``path``, remembering where it stopped.

    A last line without its ``"\\n"`` is still being written: it is left for a later call. A
    missing file yields nothing. Malformed lines (bad JSON, not an object, bad UTF-8) are skipped
    with a warning. A file shorter than the offset was replaced: reading restarts at its start.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.path = path
        self._offset = offset

    @property
    def offset(self) -> int:
        """Bytes of the file consumed so far: always the end of a complete line."""
        return self._offset

    def seek(self, offset: int) -> None:
        """Read from ``offset`` (the end of a line) again: what was read since then was not
        stored after all (the store failed), so the next call returns it once more."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self._offset = offset

    def read_new(self) -> list[dict[str, Any]]:
        """The events appended since the last call, in file order."""
        try:
            with self.path.open("rb") as fh:
                size = fh.seek(0, 2)
                if size < self._offset:
                    logger.warning(
                        "%s shrank below offset %d (%d bytes): reading it from the start",
                        self.path,
                        self._offset,
                        size,
                    )
                    self._offset = 0
                fh.seek(self._offset)
                data = fh.read(size - self._offset)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        start = self._offset
        self._offset += end + 1
        events: list[dict[str, Any]] = []
        for line in data[:end].split(b"\n"):
            event = self._parse(line, start)
            if event is not None:
                events.append(event)
            start += len(line) + 1
        return events

    def _parse(self, line: bytes, at: int) -> dict[str, Any] | None:
        if not line.strip():
            return None
        try:
            event = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            logger.warning("%s: skipping malformed line at byte %d: %s", self.path, at, exc)
            return None
        if not isinstance(event, dict):
            logger.warning("%s: skipping non-object line at byte %d", self.path, at)
            return None
        return event
