"""``glmft validate PATH``: check GLM-4 conversation data and report every problem.

PATH is a ``.jsonl`` file, a ``.json`` file (an array of conversations or one object) or a data
directory holding any of ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``.

Plain output, one line per issue, then a summary line::

    data/train.jsonl:12: messages[2].content: content must be a string, got null [content_invalid]
    data/train.jsonl:40: warning: messages[3].content: empty content: ... [content_empty]
    data/train.json:[3]: messages: no assistant message with non-empty content ... [...]
    data/train.jsonl: invalid: 120 conversations (1 invalid), 1 error, 1 warning

JSONL positions are 1-based line numbers; ``.json`` positions are 0-based array indexes in
brackets. ``--json`` prints one object ``{"valid", "conversations", "errors", "warnings",
"stats"}`` instead, each issue being ``{"file", "line", "index", "path", "code", "message"}``.

``--model`` (optionally with ``--config``) adds token statistics of the valid conversations from
``trainer.tokenstats.compute_token_stats`` (imported lazily): ``"stats"`` in the JSON output, a
``stats:`` line in the plain output.

A run that takes longer than a second shows its progress on stderr (conversations read, then
tokenised), redrawn in place on a terminal, a line every few seconds otherwise.

Exit status: 0 valid, 1 some conversation invalid, 2 usage or I/O error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from trainer.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE
from trainer.datafiles import DataFileError, RawRecord, iter_records
from trainer.images import ImageCheck
from trainer.validation import Issue, ValidationReport, validate_records

NAME = "validate"
#: Progress shows once a run has taken this long, then every few seconds (redrawn on a terminal).
PROGRESS_AFTER_S = 1.0
PROGRESS_EVERY_S = 5.0
HELP = "Check GLM-4 conversation data (.jsonl, .json or a data dir) and report every problem."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help=".jsonl, .json or data directory")
    parser.add_argument(
        "--model",
        type=Path,
        metavar="MODEL_DIR",
        help="model directory: add token statistics from its tokenizer",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="CONFIG",
        help="fine-tuning config: check token lengths against its limits",
    )
    parser.add_argument(
        "--vision",
        action="store_true",
        help="vision model data (GLM-4V): allow an image on the first message and check that "
        "its file is a readable image (relative paths from the data file's directory)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class Progress:
    """Progress on ``stream`` (stderr), only once a run has taken ``PROGRESS_AFTER_S``: a short
    run prints nothing. A terminal gets one line redrawn in place, a log a line every
    ``PROGRESS_EVERY_S``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = min(0.2, PROGRESS_EVERY_S) if self.tty else PROGRESS_EVERY_S
        self.start = time.monotonic()
        self.next_at = self.start + PROGRESS_AFTER_S
        self.shown = False

    def update(self, text: str) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        line = f"glmft {NAME}: {text} ({now - self.start:.0f} s)"
        self.stream.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.stream.flush()
        self.shown = True

    def records(self, records: Iterable[RawRecord]) -> Iterator[RawRecord]:
        """``records`` passed through, counted."""
        for count, record in enumerate(records, start=1):
            if count % 1000 == 0:
                self.update(f"read {count:,} conversations")
            yield record

    def tokenised(self, done: int, total: int) -> None:
        self.update(f"token statistics: {done:,}/{total:,} conversations")

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fail(message: str) -> int:
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"glmft {NAME}: error: {one_line}\n")
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    if args.config is not None and args.model is None:
        return _fail("--config needs --model (token statistics need the model's tokenizer)")
    want_stats = args.model is not None
    records: list[tuple[int, list[dict[str, Any]]]] = []
    on_conversation = (lambda msgs, pos: records.append((pos, msgs))) if want_stats else None
    progress = Progress()
    try:
        report = validate_records(
            progress.records(iter_records(args.path)),
            vision=args.vision,
            on_conversation=on_conversation,
            images=ImageCheck() if args.vision else None,
        )
        if want_stats:
            problem = _add_token_stats(report, records, args.model, args.config, progress)
            if problem:
                return _fail(problem)
    except DataFileError as exc:
        return _fail(str(exc))
    finally:
        progress.close()
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        _print_plain(report, str(args.path))
    return EXIT_OK if report.valid else EXIT_INVALID


def _add_token_stats(
    report: ValidationReport,
    records: list[tuple[int, list[dict[str, Any]]]],
    model_dir: Path,
    config_path: Path | None,
    progress: Progress,
) -> str | None:
    """Fill ``report.stats``; return a one-line problem, or None."""
    from trainer.config import ConfigError
    from trainer.tokenstats import compute_token_stats  # heavy: the tokenizer stack

    try:
        report.stats = compute_token_stats(
            records, model_dir=model_dir, config_path=config_path, on_progress=progress.tokenised
        )
    except (OSError, ValueError, ConfigError) as exc:
        return f"token statistics failed: {exc}"
    return None


def format_issue(issue: Issue, *, warning: bool = False) -> str:
    """``LOCATION: [warning: ]PATH: MESSAGE [CODE]`` (``PATH`` omitted for file-level issues)."""
    parts = [issue.location]
    if warning:
        parts.append("warning")
    if issue.path:
        parts.append(issue.path)
    parts.append(f"{issue.message} [{issue.code}]")
    return ": ".join(parts)


def summary_line(report: ValidationReport, path: str) -> str:
    """``PATH: valid|invalid: N conversations[ (K invalid)], E errors, W warnings``."""
    bad = len({(i.file, i.index) for i in report.errors if i.index is not None})
    convs = _plural(report.conversations, "conversation") + (f" ({bad} invalid)" if bad else "")
    verdict = "valid" if report.valid else "invalid"
    counts = f"{_plural(len(report.errors), 'error')}, {_plural(len(report.warnings), 'warning')}"
    return f"{path}: {verdict}: {convs}, {counts}"


def _print_plain(report: ValidationReport, path: str) -> None:
    lines = [format_issue(i) for i in report.errors]
    lines += [format_issue(i, warning=True) for i in report.warnings]
    lines.append(summary_line(report, path))
    if report.stats:
        lines.append("stats: " + json.dumps(report.stats, ensure_ascii=False))
    sys.stdout.write("\n".join(lines) + "\n")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
