"""``glmft-client jobs list|show|cancel|pause|resume|events|wait``."""

from __future__ import annotations

import argparse

from glmft_client._client import Client
from glmft_client.cli.console import ExitCode, note, print_json
from glmft_client.cli.finetune import follow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = commands.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--state", action="append", help="repeat to match any")
    listing.add_argument("--model", help="only jobs on this base model")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    listing.set_defaults(run=run_list)
    for name, run, text in (
        ("show", run_show, "one job (JSON)"),
        ("cancel", run_cancel, "cancel a job"),
        ("pause", run_pause, "pause a job (its checkpoints are kept; resume continues)"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id", help="the job's id (job-...)")
        command.set_defaults(run=run)
    resume = commands.add_parser("resume", help="queue a paused, failed or cancelled job again")
    resume.add_argument("job_id", help="the job's id (job-...)")
    resume.add_argument("--checkpoint", type=int, help="the step to resume from (default newest)")
    resume.set_defaults(run=run_resume)
    events = commands.add_parser("events", help="a job's events")
    events.add_argument("job_id", help="the job's id (job-...)")
    events.add_argument("--follow", action="store_true", help="stream until the job finishes")
    events.set_defaults(run=run_events)
    wait = commands.add_parser("wait", help="follow a job; print its adapter id")
    wait.add_argument("job_id", help="the job's id (job-...)")
    wait.add_argument("--timeout", type=float, help="give up after SECONDS (exit 3)")
    wait.add_argument(
        "--poll-interval", type=float, default=5.0, metavar="SECONDS", help="default 5"
    )
    wait.set_defaults(run=run_wait)


def run_list(client: Client, args: argparse.Namespace) -> int:
    page = client.jobs.list(state=args.state, model=args.model, limit=args.limit)
    for job in page.data:
        steps = f"{job.step}/{job.max_steps}" if job.max_steps else str(job.step)
        print(
            f"{job.id}  {job.state:<10}  {job.model}  {job.method}  step {steps}  "
            f"{job.adapter_id or ''}".rstrip()
        )
    return ExitCode.OK


def run_show(client: Client, args: argparse.Namespace) -> int:
    print_json(client.jobs.retrieve(args.job_id))
    return ExitCode.OK


def run_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.cancel(args.job_id)
    note(f"job {job.id}: {job.state}")
    return ExitCode.OK


def run_pause(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.pause(args.job_id)
    note(f"job {job.id}: {job.state}")
    return ExitCode.OK


def run_resume(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.resume(args.job_id, checkpoint_step=args.checkpoint)
    note(f"job {job.id}: {job.state} (from step {job.resume_from_step or 0})")
    return ExitCode.OK


def run_events(client: Client, args: argparse.Namespace) -> int:
    for event in client.jobs.events(args.job_id, follow=args.follow):
        print(f"{event.created_at:%H:%M:%S}  {event.kind:<10}  {event.message}", flush=True)
    return ExitCode.OK


def run_wait(client: Client, args: argparse.Namespace) -> int:
    return follow(client, client.jobs.retrieve(args.job_id), args.timeout, args.poll_interval)
