"""``glmft-client chat`` (one prompt, or a conversation on stdin) and ``compare`` (several
models answer the same prompts, side by side)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from glmft_client._client import Client
from glmft_client.cli.console import CLIError, ExitCode
from glmft_client.cli.table import column_widths, render_table
from glmft_client.resources.chat import ChatOptions, ModelRef
from glmft_client.types import ChatDelta, ChatResponse


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--system", help="a system message")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float, help="0 decodes greedily")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument("--seed", type=int)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a base model, an adapter id or a job id")
    parser.add_argument("--checkpoint", type=int, help="with a job id as --model: its step")
    parser.add_argument("--prompt", help="answer this and exit (default: read turns from stdin)")
    parser.add_argument("--no-stream", action="store_true", help="print the answer when done")
    _sampling_arguments(parser)
    parser.set_defaults(run=run_chat)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, help="repeat: two or more")
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL: prompt or messages")
    parser.add_argument("--width", type=int, help="table width (default: the terminal's)")
    parser.add_argument("--json", action="store_true", help="one JSON line per prompt instead")
    _sampling_arguments(parser)
    parser.set_defaults(run=run_compare)


def _options(args: argparse.Namespace) -> ChatOptions:
    options: ChatOptions = {}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        options["temperature"] = args.temperature
    if args.top_p is not None:
        options["top_p"] = args.top_p
    if args.repetition_penalty is not None:
        options["repetition_penalty"] = args.repetition_penalty
    if args.seed is not None:
        options["seed"] = args.seed
    return options


def _answer(
    client: Client, model: ModelRef, messages: list[dict[str, Any]], args: argparse.Namespace
) -> str:
    if args.no_stream:
        text = client.chat.create(model=model, messages=messages, **_options(args)).message.content
        print(text, flush=True)
        return text
    for chunk in client.chat.stream(model=model, messages=messages, **_options(args)):
        if isinstance(chunk, ChatDelta):
            print(chunk.text, end="", flush=True)
        elif isinstance(chunk, ChatResponse):
            print(flush=True)
            return chunk.message.content
    return ""


def run_chat(client: Client, args: argparse.Namespace) -> int:
    model: ModelRef = args.model
    if args.checkpoint is not None:
        model = {"job": args.model, "checkpoint": args.checkpoint}
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    turns = [args.prompt] if args.prompt is not None else None
    interactive = turns is None and sys.stdin.isatty()
    while True:
        if turns is not None:
            if not turns:
                return ExitCode.OK
            text = turns.pop(0)
        else:
            if interactive:
                sys.stderr.write("you> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line or not line.strip():
                return ExitCode.OK
            text = line.rstrip("\n")
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": _answer(client, model, messages, args)})


def read_prompts(path: Path) -> list[list[dict[str, Any]]]:
    """Conversations from a JSONL file: ``{"prompt": str}``, ``{"messages": [...]}`` or a
    JSON string per line; blank lines are skipped."""
    if not path.is_file():
        raise CLIError(f"--prompts {path}: no such file")
    prompts: list[list[dict[str, Any]]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except ValueError as exc:
            raise CLIError(f"{path}:{number}: not JSON: {exc}") from exc
        if isinstance(item, str):
            item = {"prompt": item}
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            prompts.append([{"role": "user", "content": item["prompt"]}])
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            prompts.append(item["messages"])
        else:
            raise CLIError(f'{path}:{number}: expected {{"prompt": ...}} or {{"messages": [...]}}')
    if not prompts:
        raise CLIError(f"--prompts {path}: no prompts")
    return prompts


def run_compare(client: Client, args: argparse.Namespace) -> int:
    if len(args.model) < 2:
        raise CLIError("compare needs two or more --model")
    rows = []
    for number, messages in enumerate(read_prompts(args.prompts), start=1):
        if args.system:
            messages = [{"role": "system", "content": args.system}, *messages]
        answers = [
            client.chat.create(model=m, messages=messages, **_options(args)).message.content
            for m in args.model
        ]
        prompt = str(messages[-1].get("content", ""))
        if args.json:
            print(
                json.dumps(
                    {"prompt": prompt, "answers": dict(zip(args.model, answers, strict=True))},
                    ensure_ascii=False,
                ),
                flush=True,
            )
        rows.append([str(number), prompt, *answers])
    if not args.json:
        headers = ["#", "prompt", *args.model]
        width = args.width or shutil.get_terminal_size((160, 24)).columns
        print(render_table(headers, rows, column_widths(len(headers), width)))
    return ExitCode.OK
