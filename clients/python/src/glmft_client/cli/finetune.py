"""``glmft-client finetune``: validate locally, check the job with the server, upload, create the
job idempotently for this CI run, follow it, print the adapter id.

The server checks the model, the config and the GPUs (``POST /jobs/check``) before anything is
uploaded, so a typo in ``--model`` or a refused ``--gpus`` leaves no dataset behind.

The idempotency key is derived from the inputs (file contents, model, method, config, overrides)
and the CI run (``GITHUB_RUN_ID``/``GITHUB_RUN_ATTEMPT``, GitLab's ``CI_PIPELINE_ID``/
``CI_JOB_ID``): re-running the step in the same run follows the job it created instead of
training again; outside CI every invocation creates a new job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from glmft_client._client import Client
from glmft_client.cli import validation
from glmft_client.cli.console import CLIError, ExitCode, Progress, note
from glmft_client.types import Job

KEY_FIELD = "glmft_ci_key"
CI_VARIABLES = (
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "CI_PROJECT_ID",
    "CI_PIPELINE_ID",
    "CI_JOB_ID",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="base model of the registry")
    parser.add_argument(
        "--method",
        choices=("lora", "ptuning_v2", "sft"),
        default="lora",
        help="LoRA, P-Tuning v2 or full fine-tuning (default lora)",
    )
    parser.add_argument("--train", type=Path, required=True, help="training data (.jsonl/.json)")
    parser.add_argument("--validation", type=Path, help="validation data (.jsonl/.json)")
    parser.add_argument("--config", help="a YAML config file, or a preset name (tiny/lora)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. training_args.max_steps=500 (JSON values)",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        help="GPUs for the job; 0 trains on CPU (default: the server's for the model: its "
        "registry entry, else 1 when a worker has GPUs, else 0)",
    )
    parser.add_argument("--seed", type=int, help="sets training_args.seed")
    parser.add_argument("--suffix", help="part of the adapter id ft:<base>:<suffix>:<job>")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a string pair stored on the job, filterable (repeatable)",
    )
    parser.add_argument("--wait", action="store_true", help="follow the job until it finishes")
    parser.add_argument("--timeout", type=float, help="with --wait: give up after SECONDS")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --wait: how often to look at the job (default 5)",
    )
    parser.add_argument("--idempotency-key", help="default: derived from the inputs and CI run")
    parser.add_argument(
        "--no-local-validation",
        action="store_true",
        help="skip the local check (the server validates the upload anyway)",
    )
    parser.set_defaults(run=run)


def parse_pairs(pairs: list[str], flag: str, *, json_values: bool) -> dict[str, Any]:
    """``KEY=VALUE`` arguments; values parse as JSON when they can (``500``, ``true``)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} {pair!r}: expected KEY=VALUE")
        value: Any = raw
        if json_values:
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        parsed[key] = value
    return parsed


def read_config(value: str | None) -> str | None:
    """A config file's text (a YAML document), or ``value`` itself as a preset name."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        raise CLIError(f"--config {value}: no such file")
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derive_key(inputs: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The job's idempotency key: the inputs and the CI run (a fresh nonce outside CI)."""
    run: dict[str, str] = {name: env[name] for name in CI_VARIABLES if env.get(name)}
    if not run:
        run = {"local": uuid.uuid4().hex}
    canonical = json.dumps({"inputs": inputs, "run": run}, sort_keys=True, default=str)
    return f"glmft-ci-{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def _existing_file(path: Path | None, flag: str) -> Path | None:
    if path is not None and not path.is_file():
        raise CLIError(f"{flag} {path}: no such file")
    return path


def _upload(client: Client, path: Path, progress: Progress) -> str:
    dataset = client.datasets.upload(path, on_progress=progress.upload(path.name))
    progress.close()
    if not dataset.valid:
        validation.print_issues(path, dataset.report.errors, dataset.error_count)
        raise CLIError(
            f"{path}: {dataset.error_count} invalid conversation(s) (server validation; "
            f"dataset {dataset.id})"
        )
    note(f"uploaded {path} as {dataset.id} ({dataset.conversations} conversations)")
    return dataset.id


def _check(client: Client, args: argparse.Namespace, sets: dict[str, Any]) -> None:
    """The server's verdict on the model, config and GPUs, before anything is uploaded."""
    checked = client.jobs.check(
        model=args.model,
        method=args.method,
        config=read_config(args.config),
        overrides=sets,
        gpus=args.gpus,
        seed=args.seed,
    )
    for line in checked.notes:
        note(f"config: {line}")
    where = f"{checked.gpus} GPU(s)" if checked.gpus else "CPU"
    note(f"job checked: {checked.model}, {checked.method}, on {where}")


def _create(client: Client, args: argparse.Namespace, key: str, sets: dict[str, Any]) -> Job:
    _check(client, args, sets)
    progress = Progress()
    train = _upload(client, args.train, progress)
    val = _upload(client, args.validation, progress) if args.validation else None
    metadata = parse_pairs(args.metadata, "--metadata", json_values=False)
    return client.jobs.create(
        model=args.model,
        method=args.method,
        training_dataset=train,
        validation_dataset=val,
        config=read_config(args.config),
        overrides=sets,
        gpus=args.gpus,
        seed=args.seed,
        suffix=args.suffix,
        metadata={**metadata, KEY_FIELD: key},
        idempotency_key=key,
    )


def github_output(**values: str) -> None:
    """Append ``name=value`` lines to ``$GITHUB_OUTPUT`` (GitHub Actions step outputs)."""
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in values.items())


def follow(client: Client, job: Job, timeout: float | None, poll_interval: float) -> int:
    """Wait for ``job`` with progress; print the adapter id on success."""
    progress = Progress()
    try:
        job = client.jobs.wait(
            job.id, timeout=timeout, poll_interval=poll_interval, on_update=progress.update
        )
    finally:
        progress.close()
    if job.state == "succeeded" and job.adapter_id:
        github_output(adapter_id=job.adapter_id)
        print(job.adapter_id)
        return ExitCode.OK
    reason = f"{job.error.code}: {job.error.message}" if job.error else "no error recorded"
    raise CLIError(f"job {job.id} {job.state}: {reason}", ExitCode.JOB_FAILED)


def run(client: Client, args: argparse.Namespace) -> int:
    """The ``finetune`` command."""
    _existing_file(args.train, "--train")
    _existing_file(args.validation, "--validation")
    sets = parse_pairs(args.set, "--set", json_values=True)
    if not args.no_local_validation:
        validation.check_files([p for p in (args.train, args.validation) if p is not None])
    inputs = {
        "model": args.model,
        "method": args.method,
        "train": _sha256(args.train),
        "validation": _sha256(args.validation) if args.validation else None,
        "config": read_config(args.config),
        "overrides": sets,
        "gpus": args.gpus,
        "seed": args.seed,
        "suffix": args.suffix,
        "metadata": args.metadata,
    }
    key = args.idempotency_key or derive_key(inputs, os.environ)
    found = client.jobs.list(metadata={KEY_FIELD: key}, limit=1).data
    if found:
        job = found[0]
        note(f"job {job.id} was already created for these inputs in this CI run; following it")
    else:
        job = _create(client, args, key, sets)
        note(f"created job {job.id} ({job.state})")
    github_output(job_id=job.id)
    if not args.wait:
        print(job.id)
        return ExitCode.OK
    return follow(client, job, args.timeout, args.poll_interval)
