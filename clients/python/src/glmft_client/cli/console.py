"""What the command line shares: exit codes, the error line, JSON output and job progress
(a bar on a terminal, plain lines in CI logs)."""

from __future__ import annotations

import sys
import time
from enum import IntEnum
from typing import TextIO

from pydantic import BaseModel

from glmft_client._uploads import ProgressCallback
from glmft_client.errors import APIError, APIStatusError, GlmftError, WaitTimeoutError
from glmft_client.types import Job

PROG = "glmft-client"


class ExitCode(IntEnum):
    """The exit status of every command (docs/ci-workflow.md lists them)."""

    OK = 0
    JOB_FAILED = 1  # the job (or evaluation) failed or was cancelled
    INVALID_INPUT = 2  # bad arguments, unreadable or invalid data, a refused config or model
    TIMEOUT = 3  # --timeout passed before the job finished (it keeps running)
    API_ERROR = 4  # the service: unreachable, 5xx after retries, authentication
    BELOW_THRESHOLD = 5  # eval: a model scored below a --threshold
    INTERRUPTED = 130


class CLIError(GlmftError):
    """A failure the command reports with ``exit_code`` and one line."""

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.INVALID_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: 4xx answers that are the caller's environment, not the request's content.
_SERVICE_STATUSES = frozenset({401, 403, 408, 429})


def exit_code_for(error: GlmftError) -> ExitCode:
    """The exit status for an error that ended a command."""
    if isinstance(error, CLIError):
        return error.exit_code
    if isinstance(error, WaitTimeoutError):
        return ExitCode.TIMEOUT
    status = error.status_code if isinstance(error, APIStatusError) else None
    if status is not None and 400 <= status < 500 and status not in _SERVICE_STATUSES:
        return ExitCode.INVALID_INPUT
    return ExitCode.API_ERROR


def describe(error: GlmftError) -> str:
    """One line: the error's code and message (and param and request id when known)."""
    if isinstance(error, APIError):
        code = error.code or (f"http_{error.status_code}" if error.status_code else "connection")
        param = f" (param {error.param})" if error.param else ""
        request = f" [request {error.request_id}]" if error.request_id else ""
        return f"{code}: {error.message}{param}{request}"
    if isinstance(error, WaitTimeoutError):
        stop = f"{error.kind}s cancel {error.job_id}"
        return f"timeout: {error}; it keeps running (glmft-client {stop} stops it)"
    return str(error)


def error(message: str, stream: TextIO | None = None) -> None:
    """Write ``glmft-client: error: message`` to stderr."""
    (stream or sys.stderr).write(f"{PROG}: error: {message}\n")


def note(message: str, stream: TextIO | None = None) -> None:
    """A progress note on stderr (stdout carries only results)."""
    (stream or sys.stderr).write(f"{message}\n")
    (stream or sys.stderr).flush()


def print_json(value: BaseModel) -> None:
    """A model as pretty JSON on stdout."""
    print(value.model_dump_json(indent=2))


def _loss(job: Job) -> str:
    loss = (job.latest_metrics or {}).get("train", {}).get("loss")
    return f" loss {loss:.4f}" if loss is not None else ""


class Progress:
    """Job progress on ``stream``: a redrawn bar on a terminal, else a line per change of
    state and at most one per ``interval_s`` for steps (CI logs stay short)."""

    def __init__(
        self, stream: TextIO | None = None, *, tty: bool | None = None, interval_s: float = 10.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self._last: tuple[str, int] | None = None
        self._last_line_at = 0.0
        self._drawn = False

    def update(self, job: Job) -> None:
        """Show ``job``'s state, step and loss."""
        now = time.monotonic()
        if self.tty:
            self._draw(job)
        elif (
            self._last is None
            or job.state != self._last[0]
            or job.done
            or (job.step != self._last[1] and now - self._last_line_at >= self.interval_s)
        ):
            total = f"/{job.max_steps}" if job.max_steps else ""
            percent = f" ({job.progress:.0%})" if job.progress is not None else ""
            self.stream.write(
                f"{job.id}: {job.state}, step {job.step}{total}{percent}{_loss(job)}\n"
            )
            self.stream.flush()
            self._last_line_at = now
        self._last = (job.state, job.step)

    def _draw(self, job: Job, width: int = 30) -> None:
        fraction = job.progress or 0.0
        bar = "#" * int(fraction * width)
        total = f"/{job.max_steps}" if job.max_steps else ""
        line = f"{job.state:<10} [{bar:<{width}}] {fraction:>4.0%} step {job.step}{total}"
        self.stream.write(f"\r{line}{_loss(job)}   ")
        self.stream.flush()
        self._drawn = True

    def upload(self, label: str) -> ProgressCallback:
        """A ``(sent, total)`` callback showing an upload (a bar on a terminal only)."""

        def callback(sent: int, total: int) -> None:
            if self.tty:
                fraction = sent / total if total else 1.0
                self.stream.write(f"\ruploading {label} {fraction:>4.0%} ({sent}/{total} bytes)")
                self.stream.flush()
                self._drawn = True

        return callback

    def close(self) -> None:
        """End a bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
