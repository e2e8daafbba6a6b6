"""``glmft demo``: glmft's main job on embedded defaults, end to end on CPU in a few minutes.

Builds a tiny GLM-4-shaped model offline, fine-tunes it with LoRA on the bundled dataset (with
generation eval), then chats with the trained adapter next to the base model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "demo"
HELP = "build a tiny GLM-4, fine-tune it with LoRA on bundled data, evaluate and chat"

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_DATA = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO_HIDDEN_SIZE = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/demo"),
        help="where the model, checkpoints and events go (default: runs/demo)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_CONFIGS / "tiny" / "lora.yaml",
        help="the training config (default configs/tiny/lora.yaml)",
    )
    parser.add_argument("--prompt", default=None, help="what to ask (default: a training prompt)")


def run(args: argparse.Namespace) -> int:
    from trainer.contract.events import read_events
    from trainer.finetune import main as finetune
    from trainer.inference import SamplingParams, load_chat_model
    from trainer.metrics import METRIC_KEYS
    from trainer.tiny import build_tiny_model

    workdir: Path = args.workdir
    model_dir, output_dir = workdir / "model", workdir / "output"
    print(f"[1/4] building a tiny GLM-4 model in {model_dir}", flush=True)
    build_tiny_model(model_dir, hidden_size=DEMO_HIDDEN_SIZE)
    print(f"[2/4] fine-tuning with LoRA ({args.config}) into {output_dir}", flush=True)
    code = finetune(
        [
            str(DEMO_DATA),
            str(model_dir),
            str(args.config),
            "no",
            "--output-dir",
            str(output_dir),
            "--base-model-name",
            "glm-4-tiny",
        ]
    )
    events = read_events(output_dir)
    if code != 0:
        print(
            f"fine-tuning failed (exit {code}): {events[-1] if events else 'no events'}",
            file=sys.stderr,
        )
        return code
    steps = [e for e in events if e["event"] == "step"]
    evals = [e for e in events if e["event"] == "eval"]
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    metrics = evals[-1]["metrics"] if evals else {}
    scores = {k: round(v, 2) for k, v in metrics.items() if k in METRIC_KEYS}
    print(
        f"[3/4] loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f} over "
        f"{steps[-1]['step']} steps; eval on dev.jsonl: {json.dumps(scores)}"
    )
    adapter = Path(checkpoints[-1]["path"])
    prompt = args.prompt or _first_prompt()
    greedy = SamplingParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.0)
    messages = [{"role": "user", "content": prompt}]
    print(f"[4/4] chat, prompt {prompt!r}")
    print(f"  base model : {load_chat_model(model_dir).reply(messages, greedy)}")
    print(f"  adapter    : {load_chat_model(adapter).reply(messages, greedy)}")
    print(f"adapter saved in {adapter}; try: glmft chat {adapter}")
    return 0


def _first_prompt() -> str:
    with (DEMO_DATA / "train.jsonl").open(encoding="utf-8") as fh:
        conversation = json.loads(fh.readline())
    return str(conversation["messages"][0]["content"])
