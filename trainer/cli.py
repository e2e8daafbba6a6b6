"""The ``glmft`` command line: one subcommand per module in ``trainer.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from types import ModuleType

from trainer import __version__

# Exit codes shared by every subcommand.
EXIT_OK = 0
EXIT_INVALID = 1  # the input (data, config) is invalid
EXIT_USAGE = 2  # bad arguments, unreadable files

_COMMANDS = ("validate", "tokenize", "tiny_model", "chat", "finetune", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glmft", description="Fine-tune and serve GLM-4 chat models."
    )
    parser.add_argument("--version", action="version", version=f"glmft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _command_modules() -> Iterator[ModuleType]:
    """The trainer's commands, then the service's (``glmft.commands`` entry points), which the
    trainer never imports directly: a bare GPU box runs the trainer without the web stack."""
    for name in _COMMANDS:
        yield importlib.import_module(f"trainer.commands.{name}")
    for entry in sorted(entry_points(group="glmft.commands"), key=lambda e: e.name):
        try:
            yield entry.load()
        except ImportError as exc:  # the service's dependencies are not installed here
            logging.getLogger(__name__).debug("command %s unavailable: %s", entry.name, exc)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    code: int = args._run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
