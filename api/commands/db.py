"""``glmft db upgrade``: migrate the configured store (also done by ``glmft up`` and the API)."""

from __future__ import annotations

import argparse

NAME = "db"
HELP = "database maintenance: 'glmft db upgrade' migrates the store to the newest schema"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=["upgrade"], help="upgrade: migrate the store to the newest schema"
    )


def run(args: argparse.Namespace) -> int:
    from core.migrate import main

    return main()
