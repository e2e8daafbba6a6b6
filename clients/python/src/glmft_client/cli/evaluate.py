"""``glmft-client eval``: run a dataset through several models on the service, print their
metrics side by side, and fail the CI step (exit 5) when a model scores below a threshold;
``glmft-client evaluations list|show|cancel``.

``--threshold rouge-l=20`` applies to every ``--model`` (``--baseline`` models are shown, never
gated); ``--threshold MODEL:rouge-l=20`` to that model only. Metrics are the upstream demo's:
ROUGE-1/2/L F x 100 and BLEU-4 as a 0-1 fraction.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from glmft_client._client import Client
from glmft_client.cli import validation
from glmft_client.cli.console import CLIError, ExitCode, note, print_json
from glmft_client.cli.finetune import github_output
from glmft_client.cli.table import column_widths, render_table
from glmft_client.resources.evaluations import EvaluationModel
from glmft_client.types import METRICS, Evaluation

CHECKPOINT = ":ckpt-"  # JOB_ID:ckpt-STEP names a job's checkpoint


@dataclass(frozen=True)
class Threshold:
    """A metric's minimum for one model, and the value the evaluation gave it."""

    model: str  # the model's name as the evaluation reports it
    metric: str
    minimum: float
    value: float | None = None

    @property
    def passed(self) -> bool:
        """Met (a missing value is not)."""
        return self.value is not None and self.value >= self.minimum


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` command's arguments."""
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="a model to evaluate and gate: base model, adapter id or JOB_ID:ckpt-STEP "
        "(repeat, up to 8 with --baseline)",
    )
    parser.add_argument(
        "--baseline", action="append", default=[], help="a model shown for comparison only"
    )
    parser.add_argument("--dataset", required=True, help="a data file to upload, or a dataset id")
    parser.add_argument("--max-new-tokens", type=int, help="server default 128")
    parser.add_argument("--limit", type=int, help="only the first N conversations")
    parser.add_argument("--temperature", type=float, help="default 0 (greedy)")
    parser.add_argument("--name", help="a label for the evaluation")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[MODEL:]METRIC=VALUE",
        help=f"fail (exit 5) below it; metrics: {', '.join(METRICS)}",
    )
    parser.add_argument("--timeout", type=float, help="give up waiting after SECONDS (exit 3)")
    parser.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--width", type=int, help="table width (default: the terminal's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def add_evaluations_arguments(parser: argparse.ArgumentParser) -> None:
    """``evaluations list|show|cancel``."""
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="your evaluations, newest first")
    listing.add_argument("--state", action="append", help="repeat to match any")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=run_list)
    for name, action, text in (
        ("show", run_show, "one evaluation (JSON)"),
        ("cancel", run_cancel, "cancel an evaluation"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("evaluation_id")
        command.set_defaults(run=action)


def model_ref(text: str) -> EvaluationModel:
    """``JOB_ID:ckpt-STEP`` as a checkpoint reference; anything else as it is."""
    job, found, step = text.rpartition(CHECKPOINT)
    if found and job and ":" not in job and step.isdigit():
        return {"job": job, "checkpoint": int(step)}
    return text


def parse_thresholds(specs: list[str], gated: list[str], shown: list[str]) -> list[Threshold]:
    """``[MODEL:]METRIC=VALUE`` specs as thresholds on the models' command-line names."""
    thresholds = []
    for spec in specs:
        target, sep, raw = spec.rpartition("=")
        model, _, metric = target.rpartition(":")
        if not sep or not metric:
            raise CLIError(f"--threshold {spec!r}: expected [MODEL:]METRIC=VALUE")
        if metric not in METRICS:
            raise CLIError(f"--threshold {spec!r}: {metric!r} is none of {', '.join(METRICS)}")
        try:
            minimum = float(raw)
        except ValueError as exc:
            raise CLIError(f"--threshold {spec!r}: {raw!r} is not a number") from exc
        if model and model not in shown:
            raise CLIError(f"--threshold {spec!r}: {model} is not one of the --model/--baseline")
        thresholds += [Threshold(m, metric, minimum) for m in ([model] if model else gated)]
    return thresholds


def _dataset(client: Client, value: str) -> str:
    """A dataset id: ``value`` itself, or the id of ``value`` uploaded as a file."""
    path = Path(value)
    if not path.is_file():
        if value.startswith("ds-"):
            return value
        raise CLIError(f"--dataset {value}: no such file (nor a dataset id ds-...)")
    validation.check_files([path])
    dataset = client.datasets.upload(path)
    if not dataset.valid:
        validation.print_issues(path, dataset.report.errors, dataset.error_count)
        raise CLIError(f"{path}: {dataset.error_count} invalid conversation(s) ({dataset.id})")
    note(f"uploaded {path} as {dataset.id} ({dataset.conversations} conversations)")
    return dataset.id


class EvalProgress:
    """A line per change of state, and at most one per ``interval_s`` for progress."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last: tuple[str, int] | None = None
        self._at = 0.0

    def update(self, evaluation: Evaluation) -> None:
        """Show ``evaluation``'s state and progress when it is worth a line."""
        done, total = evaluation.progress.done, evaluation.progress.total
        now = time.monotonic()
        if (
            self._last is None
            or evaluation.state != self._last[0]
            or (done != self._last[1] and now - self._at >= self.interval_s)
        ):
            percent = f" ({done / total:.0%})" if total else ""
            self.stream.write(
                f"{evaluation.id}: {evaluation.state}, {done}/{total} answers{percent}\n"
            )
            self.stream.flush()
            self._at = now
        self._last = (evaluation.state, done)


def _cell(metric: str, value: float | None, failed: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.4f}" if metric == "bleu-4" else f"{value:.2f}"
    return f"{text} *" if failed else text


def render(evaluation: Evaluation, thresholds: list[Threshold], width: int) -> str:
    """The metrics side by side, one column per model; ``*`` marks a value below threshold."""
    failed = {(t.model, t.metric) for t in thresholds if not t.passed}
    rows = [
        [
            metric,
            *(
                _cell(metric, evaluation.metrics.get(m, {}).get(metric), (m, metric) in failed)
                for m in evaluation.models
            ),
        ]
        for metric in METRICS
    ]
    headers = ["metric", *evaluation.models]
    widths = column_widths(len(headers), width, first=7)  # at most: what the terminal allows
    fitted = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return render_table(headers, rows, [min(w, f) for w, f in zip(widths, fitted, strict=True)])


def run(client: Client, args: argparse.Namespace) -> int:
    """The ``eval`` command."""
    shown = [*args.baseline, *args.model]
    if len(shown) > 8:
        raise CLIError(f"{len(shown)} models; an evaluation compares at most 8")
    thresholds = parse_thresholds(args.threshold, args.model, shown)
    evaluation = client.evaluations.create(
        models=[model_ref(m) for m in shown],
        dataset=_dataset(client, args.dataset),
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        temperature=args.temperature,
        name=args.name,
    )
    note(f"evaluation {evaluation.id}: {evaluation.samples} samples x {len(shown)} models")
    github_output(evaluation_id=evaluation.id)
    evaluation = client.evaluations.wait(
        evaluation.id,
        timeout=args.timeout,
        poll_interval=args.poll_interval,
        on_update=EvalProgress().update,
    )
    if evaluation.state != "succeeded":
        reason = f"{evaluation.error.code}: {evaluation.error.message}" if evaluation.error else ""
        raise CLIError(
            f"evaluation {evaluation.id} {evaluation.state}{': ' if reason else ''}{reason}",
            ExitCode.JOB_FAILED,
        )
    names = dict(zip(shown, evaluation.models, strict=True))  # the server's names, in order
    thresholds = [
        Threshold(
            names[t.model],
            t.metric,
            t.minimum,
            evaluation.metrics.get(names[t.model], {}).get(t.metric),
        )
        for t in thresholds
    ]
    passed = all(t.passed for t in thresholds)
    github_output(passed=str(passed).lower())
    if args.json:
        result: dict[str, Any] = {
            "evaluation": evaluation.model_dump(mode="json"),
            "thresholds": [{**asdict(t), "passed": t.passed} for t in thresholds],
            "passed": passed,
        }
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        width = args.width or shutil.get_terminal_size((160, 24)).columns
        print(render(evaluation, thresholds, width))
    for t in thresholds:
        if not t.passed:
            note(f"below threshold: {t.model}: {t.metric} {t.value} < {t.minimum:g}")
    return ExitCode.OK if passed else ExitCode.BELOW_THRESHOLD


def run_list(client: Client, args: argparse.Namespace) -> int:
    """``evaluations list``: one line each."""
    for e in client.evaluations.list(state=args.state, limit=args.limit).data:
        print(
            f"{e.id}  {e.state:<10}  {e.progress.done}/{e.progress.total}  "
            f"{' | '.join(e.models)}  {e.name or ''}".rstrip()
        )
    return ExitCode.OK


def run_show(client: Client, args: argparse.Namespace) -> int:
    """``evaluations show``: JSON."""
    print_json(client.evaluations.retrieve(args.evaluation_id))
    return ExitCode.OK


def run_cancel(client: Client, args: argparse.Namespace) -> int:
    """``evaluations cancel``."""
    evaluation = client.evaluations.cancel(args.evaluation_id)
    note(f"evaluation {evaluation.id}: {evaluation.state}")
    return ExitCode.OK
