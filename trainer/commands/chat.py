"""``glmft chat``: talk to a base model, an adapter checkpoint or a full-SFT checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

NAME = "chat"
HELP = "chat with a model or checkpoint directory (LoRA, P-Tuning v2 and full SFT)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        type=Path,
        metavar="MODEL_OR_CHECKPOINT_DIR",
        help="a base model, a LoRA or P-Tuning v2 checkpoint, or a full-SFT checkpoint",
    )
    parser.add_argument("--base", type=Path, help="base model directory (for a moved base)")
    parser.add_argument("--prompt", help="ask once and exit (default: read lines from stdin)")
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, no sampling")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="default 1024")
    parser.add_argument("--temperature", type=float, default=0.8, help="default 0.8 (upstream)")
    parser.add_argument("--top-p", type=float, default=0.8, help="default 0.8 (upstream)")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.2, help="default 1.2 (upstream)"
    )
    parser.add_argument("--seed", type=int, help="seed the sampling (a repeatable answer)")


def run(args: argparse.Namespace) -> int:
    from trainer.inference import SamplingParams, load_chat_model
    from trainer.modeling import UnsupportedModelError

    if not args.path.is_dir():
        print(f"glmft chat: error: not a directory: {args.path}", file=sys.stderr)
        return 2
    try:
        chat = load_chat_model(args.path, base_dir=args.base)
    except (OSError, UnsupportedModelError) as exc:
        print(f"glmft chat: error: {exc}", file=sys.stderr)
        return 2
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    history = [{"role": "system", "content": args.system}] if args.system else []
    prompts = [args.prompt] if args.prompt is not None else _stdin_lines()
    for prompt in prompts:
        history.append({"role": "user", "content": prompt})
        answer = chat.reply(history, params)
        history.append({"role": "assistant", "content": answer})
        print(answer, flush=True)
    return 0


def _stdin_lines() -> Iterator[str]:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()
