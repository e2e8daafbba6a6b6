"""``glmft tiny-model OUT_DIR [--vision]``: write a tiny random GLM-4 chat model and tokenizer
(with ``--vision``: a GLM-4.1V-shaped vision model and its image processor), offline.

The result loads with ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(OUT_DIR)`` and
serves as the base model for smoke tests and demos. OUT_DIR may be missing, empty, or an earlier
model directory (one with a ``config.json``), which is overwritten; anything else is refused so a
typo cannot scribble over unrelated files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.cli import EXIT_OK, EXIT_USAGE

NAME = "tiny-model"
HELP = (
    "Write a tiny random GLM-4 chat model (GlmForCausalLM) and tokenizer to OUT_DIR, offline; "
    "--vision: a tiny GLM-4.1V-shaped vision model (Glm4vForConditionalGeneration)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to write")
    parser.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="weight init seed (default 0)")
    parser.add_argument(
        "--vocab-size", type=int, default=2000, help="regular BPE tokens before the 14 specials"
    )
    parser.add_argument(
        "--vision",
        action="store_true",
        help="a vision model (Glm4vForConditionalGeneration) with its image processor",
    )


def _fail(message: str) -> None:
    print(f"glmft {NAME}: error: {message}", file=sys.stderr)


def check_out_dir(out_dir: Path) -> str | None:
    """Return why ``out_dir`` may not be written, or None if it may."""
    if out_dir.exists() and not out_dir.is_dir():
        return f"{out_dir} exists and is not a directory"
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        return f"{out_dir} is not empty and holds no model (no config.json); refusing to overwrite"
    return None


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    for flag, value in (("--hidden-size", args.hidden_size), ("--layers", args.layers)):
        if value <= 0:
            _fail(f"{flag} must be positive, got {value}")
            return EXIT_USAGE
    if args.hidden_size % 16:
        _fail(f"--hidden-size must be a multiple of 16, got {args.hidden_size}")
        return EXIT_USAGE
    if args.vocab_size < 300:
        _fail(f"--vocab-size must be at least 300, got {args.vocab_size}")
        return EXIT_USAGE
    try:
        problem = check_out_dir(out_dir)
    except OSError as exc:
        problem = f"cannot read {out_dir}: {exc.strerror or exc}"
    if problem:
        _fail(problem)
        return EXIT_USAGE

    from trainer.tiny import build_tiny_model  # heavy: torch + transformers
    from trainer.tiny_vision import build_tiny_vision_model

    build = build_tiny_vision_model if args.vision else build_tiny_model
    try:
        path = build(
            out_dir,
            hidden_size=args.hidden_size,
            layers=args.layers,
            seed=args.seed,
            vocab_size=args.vocab_size,
        )
    except OSError as exc:
        _fail(f"cannot write {out_dir}: {exc.strerror or exc}")
        return EXIT_USAGE
    print(path.resolve())
    return EXIT_OK
