"""``glmft tokenize``: print what the model will be trained (or evaluated) on, one JSON per line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "tokenize"
HELP = "print input_ids/labels (or eval prompt/target ids) per conversation as JSON lines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="PATH", help=".jsonl, .json or data dir")
    parser.add_argument(
        "--model", type=Path, required=True, metavar="MODEL_DIR", help="the tokenizer's model dir"
    )
    parser.add_argument("--config", type=Path, help="take combine and lengths from this config")
    parser.add_argument(
        "--combine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one loss mask over the whole conversation (upstream combine: true) or per message",
    )
    parser.add_argument("--max-input-length", type=int, help="default: the config's, else 512")
    parser.add_argument("--max-output-length", type=int, help="default: the config's, else 512")
    parser.add_argument("--eval", action="store_true", help="eval prompts and targets instead")
    parser.add_argument("--json", action="store_true", help="JSON lines output (the default)")


def run(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError
    from trainer.datafiles import DataFileError
    from trainer.modeling import load_tokenizer
    from trainer.template import SpecialTokens, encode_eval, encode_train
    from trainer.tokenstats import encoding_options
    from trainer.validation import validate_path

    try:
        options = encoding_options(args.config)
        tokenizer = load_tokenizer(args.model)
        special = SpecialTokens.from_tokenizer(tokenizer)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"glmft tokenize: error: {exc}", file=sys.stderr)
        return 2
    for key in ("combine", "max_input_length", "max_output_length"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    max_length = options["max_input_length"] + options["max_output_length"] + 1

    def emit(messages: list[dict[str, object]], line: int) -> None:
        if args.eval:
            for sample in encode_eval(
                tokenizer,
                special,
                messages,
                combine=options["combine"],
                max_input_length=options["max_input_length"],
                max_output_length=options["max_output_length"],
            ):
                print(
                    json.dumps(
                        {
                            "line": line,
                            "turn": sample.turn,
                            "prompt_ids": sample.prompt_ids,
                            "target_ids": sample.target_ids,
                        }
                    )
                )
        else:
            train = encode_train(
                tokenizer, special, messages, combine=options["combine"], max_length=max_length
            )
            print(json.dumps({"line": line, "input_ids": train.input_ids, "labels": train.labels}))

    try:
        report = validate_path(args.path, on_conversation=emit)
    except DataFileError as exc:
        print(f"glmft tokenize: error: {exc}", file=sys.stderr)
        return 2
    for error in report.errors:
        where = error.line if error.line is not None else f"[{error.index}]"
        print(f"{error.file}:{where}: {error.path}: {error.message}", file=sys.stderr)
    return 0 if report.valid else 1
