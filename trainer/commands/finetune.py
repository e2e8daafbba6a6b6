"""``glmft finetune``: the same as ``python -m trainer.finetune``, with the same arguments."""

from __future__ import annotations

import argparse
import logging

from trainer.contract.command import TrainerArgs
from trainer.contract.command import add_arguments as add_arguments

NAME = "finetune"
HELP = "fine-tune with LoRA, P-Tuning v2 or full SFT (same as python -m trainer.finetune)"
EXIT_USAGE = 2


def run(args: argparse.Namespace) -> int:
    from trainer.finetune import execute

    try:
        run_args = TrainerArgs.from_namespace(args)
    except ValueError as exc:
        logging.getLogger(__name__).error("%s", exc)
        return EXIT_USAGE
    return execute(run_args)
