"""``glmft finetune``: the same as ``python -m trainer.finetune``, with the same arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.checkpoints import Resume

NAME = "finetune"
HELP = "fine-tune with LoRA, P-Tuning v2 or full SFT (same as python -m trainer.finetune)"


def _resume(value: str) -> Resume:
    try:
        return Resume.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's command line (shared by ``glmft finetune`` and ``-m trainer.finetune``)."""
    parser.add_argument(
        "data_dir",
        type=Path,
        metavar="DATA_DIR",
        help="directory holding the config's data files (data_config: train.jsonl, dev.jsonl)",
    )
    parser.add_argument(
        "model_dir",
        type=Path,
        metavar="MODEL_DIR",
        help="base model directory: a native GLM-4 checkpoint (glm-4-9b-chat-hf, GLM-4-9B-0414)",
    )
    parser.add_argument(
        "config",
        type=Path,
        metavar="CONFIG",
        help="upstream-style yaml config (configs/lora.yaml, ptuning_v2.yaml, sft.yaml, tiny/...)",
    )
    parser.add_argument(
        "resume",
        nargs="?",
        default=Resume.parse("no"),
        type=_resume,
        metavar="yes|N|no",
        help="'yes': resume from the newest complete checkpoint (or start fresh when there is "
        "none); N: from checkpoint-N; 'no' (default): train from scratch",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where checkpoints and events.jsonl go (default: training_args.output_dir)",
    )
    parser.add_argument(
        "--base-model-name",
        metavar="NAME",
        help="registry name recorded in checkpoints (default: the model directory's name)",
    )
    parser.add_argument(
        "--feature-cache",
        type=Path,
        metavar="DIR",
        help="directory of pre-tokenised datasets reused across runs (default: none)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load a checkpoint whose modeling code ships with it (the operator's choice)",
    )
    parser.add_argument(
        "--lock",
        type=Path,
        metavar="FILE",
        help="hold FILE while training; refuse to run while another trainer holds it",
    )
    parser.add_argument(
        "--attempt",
        type=int,
        default=0,
        metavar="N",
        help="with --lock: this run's attempt; refuse to run once a newer attempt has run",
    )
    parser.add_argument(
        "--lock-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --lock: how long to wait for the holder to exit (default 60)",
    )


def run(args: argparse.Namespace) -> int:
    from trainer.finetune import execute, run_args

    return execute(run_args(args))
