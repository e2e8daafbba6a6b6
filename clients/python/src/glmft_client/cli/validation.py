"""Check data files before uploading them, with the server's own rules when they are installed.

The rules live in the ``glmft`` distribution (``trainer.validation``, torch-free). The SDK does
not depend on it: it is looked up at run time, and without it the server's validation of the
upload is the only check.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from glmft_client.cli.console import CLIError, note

MAX_SHOWN = 20


class IssueLike(Protocol):
    """An issue of ``trainer.validation`` or of the server's report."""

    @property
    def line(self) -> int | None: ...

    @property
    def index(self) -> int | None: ...

    @property
    def path(self) -> str: ...

    @property
    def code(self) -> str: ...

    @property
    def message(self) -> str: ...


def local_validator() -> Callable[[Path], Any] | None:
    """``trainer.validation.validate_path`` when glmft is installed, else ``None``."""
    try:
        module = importlib.import_module("trainer.validation")
    except ImportError:
        return None
    validate = getattr(module, "validate_path", None)
    return validate if callable(validate) else None  # another package named "trainer"


def issue_line(path: Path, issue: IssueLike) -> str:
    """``PATH:LINE: JSON.PATH: message [code]``, as ``glmft validate`` prints it."""
    where = f"{path}:{issue.line}" if issue.line is not None else f"{path}:[{issue.index}]"
    return f"{where}: {issue.path or '<conversation>'}: {issue.message} [{issue.code}]"


def print_issues(path: Path, issues: Sequence[IssueLike], total: int | None = None) -> None:
    """The first issues on stderr, then how many more there are."""
    for issue in issues[:MAX_SHOWN]:
        sys.stderr.write(issue_line(path, issue) + "\n")
    more = (total if total is not None else len(issues)) - min(len(issues), MAX_SHOWN)
    if more > 0:
        sys.stderr.write(f"... and {more} more\n")


def check_files(paths: Sequence[Path]) -> None:
    """Validate ``paths`` locally; raise ``CLIError`` (exit 2) naming the first bad line."""
    validate = local_validator()
    if validate is None:
        note("local validation skipped (glmft is not installed); the server validates uploads")
        return
    for path in paths:
        try:
            report = validate(path)
        except Exception as exc:  # trainer.datafiles.DataFileError, I/O errors
            raise CLIError(f"{path}: {exc}") from exc
        if report.errors:
            print_issues(path, report.errors)
            first = report.errors[0]
            raise CLIError(
                f"{path}: {len(report.errors)} error(s) in {report.conversations} "
                f"conversation(s); first: {issue_line(path, first)}"
            )
        note(f"{path}: {report.conversations} conversations valid (local check)")
