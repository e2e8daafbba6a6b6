"""One trainer per output directory: an ``flock`` that records the attempt holding it.

The worker runs the trainer with ``--lock FILE --attempt N`` (FILE in the job directory). The
trainer takes an exclusive ``flock`` on FILE before it reads its inputs and holds it until it
exits; the kernel releases it however the process ends, and processes forked from the trainer
(data loader workers) hold it with it. FILE keeps one JSON line per holder, so it records the
newest attempt that ever ran. A trainer

- whose attempt is older than the newest recorded one refuses to run: a newer attempt owns
  the job (:class:`StaleAttemptError`);
- that finds the lock held waits up to ``wait_s`` for the holder to exit, then refuses
  (:class:`DirectoryBusyError`).

So two trainers never write one job directory at once, and a stale attempt never writes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class FenceError(RuntimeError):
    """The trainer must not run: another attempt owns the directory."""

    code = "fenced"


class StaleAttemptError(FenceError):
    code = "stale_attempt"


class DirectoryBusyError(FenceError):
    code = "job_dir_busy"


@dataclass(frozen=True)
class Fence:
    """A held lock; it lasts until the process exits (the descriptor is never closed)."""

    path: Path
    attempt: int
    fd: int


def holders(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path``, oldest first (one per trainer that ever held it)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def acquire(path: Path, attempt: int, *, wait_s: float, poll_s: float = 0.2) -> Fence:
    """Hold ``path`` for ``attempt``; raises :class:`FenceError` when it must not run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                last = (holders(path) or [{}])[-1]
                raise DirectoryBusyError(
                    f"{path.parent} is held by another trainer (attempt {last.get('attempt')}, "
                    f"pid {last.get('pid')} on {last.get('host')}) after waiting {wait_s:.0f} s"
                ) from None
            time.sleep(poll_s)
    newest = max((int(r.get("attempt", 0)) for r in holders(path)), default=0)
    if attempt < newest:
        os.close(fd)  # releases the lock
        raise StaleAttemptError(
            f"attempt {attempt} is stale: attempt {newest} already ran in {path.parent}"
        )
    record = {
        "attempt": attempt,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "acquired_at": round(time.time(), 3),
    }
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.fsync(fd)
    return Fence(path, attempt, fd)
