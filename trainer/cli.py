"""The ``glmft`` command line: one subcommand per module in ``trainer.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

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
    for name in _COMMANDS:
        module = importlib.import_module(f"trainer.commands.{name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    code: int = args._run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
