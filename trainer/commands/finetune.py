"""``glmft finetune``: the same as ``python -m trainer.finetune``."""

from __future__ import annotations

import argparse

NAME = "finetune"
HELP = "fine-tune with LoRA, P-Tuning v2 or full SFT (same as python -m trainer.finetune)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="DATA_DIR MODEL_DIR CONFIG [yes|N|no] [--output-dir DIR]",
    )


def run(args: argparse.Namespace) -> int:
    from trainer.finetune import main

    return main(args.args)
