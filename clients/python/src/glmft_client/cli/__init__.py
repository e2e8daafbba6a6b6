"""``glmft-client``: the glmft API from a shell or a CI job.

Exit codes: 0 success, 1 the job or evaluation failed or was cancelled, 2 invalid input
(arguments, data, config, model), 3 timeout (the job keeps running), 4 the service (unreachable,
5xx after retries, authentication), 5 a model scored below an ``eval --threshold``,
130 interrupted. Results go to stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from glmft_client._client import Client
from glmft_client._http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, VERSION
from glmft_client.cli import chat, datasets, evaluate, finetune, jobs
from glmft_client.cli.console import PROG, ExitCode, describe, error, exit_code_for
from glmft_client.errors import GlmftError

EPILOG = (
    "exit codes: 0 ok, 1 job or evaluation failed or cancelled, 2 invalid input or data, "
    "3 timeout, 4 API or connection error, 5 eval: below a threshold"
)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; each command sets ``run(client, args) -> int``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    parser.add_argument("--base-url", help="default: $GLMFT_BASE_URL, else http://127.0.0.1:8000")
    parser.add_argument("--api-key", help="default: $GLMFT_API_KEY")
    parser.add_argument(
        "--request-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS"
    )
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    finetune.add_arguments(
        commands.add_parser("finetune", help="validate, upload, train; print the adapter id")
    )
    datasets.add_arguments(commands.add_parser("datasets", help="upload and inspect datasets"))
    jobs.add_arguments(commands.add_parser("jobs", help="list, inspect, cancel, resume jobs"))
    chat.add_chat_arguments(commands.add_parser("chat", help="chat with a model or adapter"))
    chat.add_compare_arguments(
        commands.add_parser("compare", help="answers of several models side by side")
    )
    evaluate.add_arguments(
        commands.add_parser(
            "eval", help="score models on a dataset side by side; exit 5 below a threshold"
        )
    )
    evaluate.add_evaluations_arguments(
        commands.add_parser("evaluations", help="list, inspect, cancel evaluations")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code."""
    args = build_parser().parse_args(argv)
    try:
        with Client(
            base_url=args.base_url,
            api_key=args.api_key,
            timeout=args.request_timeout,
            max_retries=args.max_retries,
        ) as client:
            code: int = args.run(client, args)
            return code
    except GlmftError as exc:
        error(describe(exc))
        return exit_code_for(exc)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return ExitCode.INTERRUPTED
