"""``glmft-client datasets upload|list|show|report|delete``."""

from __future__ import annotations

import argparse
from pathlib import Path

from glmft_client._client import Client
from glmft_client.cli import validation
from glmft_client.cli.console import CLIError, ExitCode, Progress, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upload = commands.add_parser("upload", help="upload and validate a data file")
    upload.add_argument("file", type=Path)
    upload.add_argument("--model", help="add token statistics under this model's tokenizer")
    upload.set_defaults(run=run_upload)
    listing = commands.add_parser("list", help="your datasets, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(run=run_list)
    for name, run, text in (
        ("show", run_show, "one dataset (JSON)"),
        ("report", run_report, "a dataset's validation issues"),
        ("delete", run_delete, "delete a dataset"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("dataset_id")
        command.set_defaults(run=run)


def run_upload(client: Client, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise CLIError(f"{args.file}: no such file")
    progress = Progress()
    dataset = client.datasets.upload(
        args.file, model=args.model, on_progress=progress.upload(args.file.name)
    )
    progress.close()
    print(dataset.id)
    if not dataset.valid:
        validation.print_issues(args.file, dataset.report.errors, dataset.error_count)
        raise CLIError(
            f"{args.file}: {dataset.error_count} error(s); dataset {dataset.id} cannot feed a job"
        )
    return ExitCode.OK


def run_list(client: Client, args: argparse.Namespace) -> int:
    for d in client.datasets.list(limit=args.limit).data:
        status = "valid" if d.valid else f"invalid ({d.error_count} errors)"
        print(
            f"{d.id}  {d.filename}  {d.conversations} conversations  {status}  "
            f"{d.created_at:%Y-%m-%d %H:%M}"
        )
    return ExitCode.OK


def run_show(client: Client, args: argparse.Namespace) -> int:
    print_json(client.datasets.retrieve(args.dataset_id))
    return ExitCode.OK


def run_report(client: Client, args: argparse.Namespace) -> int:
    report = client.datasets.report(args.dataset_id)
    for issue in [*report.errors, *report.warnings]:
        print(str(issue))
    print(
        f"{'valid' if report.valid else 'invalid'}: {report.conversations} conversations, "
        f"{len(report.errors)} errors, {len(report.warnings)} warnings"
    )
    return ExitCode.OK if report.valid else ExitCode.INVALID_INPUT


def run_delete(client: Client, args: argparse.Namespace) -> int:
    client.datasets.delete(args.dataset_id)
    return ExitCode.OK
