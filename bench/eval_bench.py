"""Evaluation benchmark: one evaluation of ``--prompts`` prompts x ``--new-tokens`` tokens for
``--adapters`` LoRA adapters at once, through the real service code in this process (the app,
its SQLite store, the runner thread, the chat engines), timed from ``POST /evaluations`` to
``succeeded``.

On a GPU it saves a GLM-4-9B-shaped model (``GlmConfig`` defaults) with random bf16 weights to
``--workdir`` (about 19 GB, with the tiny model's GLM-4 tokenizer) and demo-sized LoRA adapters
(r 8, alpha 32, q/k/v) with random weights; the prompts are ``--prompt-tokens`` long. A random
model rarely emits an end token, so every answer runs to its length. The target: 1,000 prompts
x 128 tokens for 4 adapters in under 2 minutes.

It also times the upstream way on ``--baseline-prompts`` prompts of one adapter (``PeftModel
.generate`` in batches of 16, as the demo's Seq2SeqTrainer evaluates) and extrapolates it to the
whole evaluation, and scores the stored answers again on the CPU (``score_texts``), the share of
the runner's time that is not generation.

Run: ``python bench/eval_bench.py`` (GPU) or ``python bench/eval_bench.py --tiny`` (CPU smoke
test). Prints a table and writes ``bench/results/eval_bench_<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient
from sqlmodel import Session, select
from transformers import AutoTokenizer

from api.main import create_app
from bench.chat_fixtures import build_model, write_lora
from core.models import Adapter, EvaluationOutput, EvaluationSample
from core.settings import BaseModelEntry, ChatSettings, Settings
from trainer.metrics import score_texts
from trainer.tiny import build_tiny_model

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "glm-4-bench"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def save_model(tiny: bool, tokenizer_dir: Path, target: Path) -> Any:
    """The model, saved where the registry will find it (with the GLM-4 tokenizer)."""
    model = build_model(tiny, tokenizer_dir)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)
    return model


def dataset_lines(tokenizer: Any, prompts: int, prompt_tokens: int) -> bytes:
    """Conversations whose user turn is about ``prompt_tokens`` tokens of random text."""
    rng = random.Random(0)
    words = [tokenizer.decode([i]).strip() for i in range(200, 1200)]
    words = [w for w in words if w and "\ufffd" not in w]
    rows = []
    for _ in range(prompts):
        question = "".join(rng.choice(words) for _ in range(prompt_tokens))
        answer = "".join(rng.choice(words) for _ in range(32))
        rows.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                },
                ensure_ascii=False,
            )
        )
    return ("\n".join(rows) + "\n").encode()


def run_evaluation(
    client: TestClient, adapters: list[str], dataset: str, new_tokens: int
) -> dict[str, Any]:
    body = {
        "models": adapters,
        "dataset": dataset,
        "max_new_tokens": new_tokens,
        "repetition_penalty": 1.0,
    }
    started = time.perf_counter()
    created = client.post("/evaluations", json=body)
    created.raise_for_status()
    evaluation_id = created.json()["id"]
    while True:
        evaluation = client.get(f"/evaluations/{evaluation_id}").json()
        if evaluation["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if evaluation["state"] != "succeeded":
        raise RuntimeError(f"evaluation {evaluation['state']}: {evaluation['error']}")
    return {"id": evaluation_id, "seconds": wall, "evaluation": evaluation}


def upstream(
    model: Any, tokenizer: Any, spec_path: Path, prompts: list[str], new_tokens: int
) -> float:
    """Seconds for PeftModel.generate over ``prompts`` in batches of 16 (the demo's eval)."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, spec_path)
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), 16):
            batch = tokenizer.apply_chat_template(
                [[{"role": "user", "content": p}] for p in prompts[i : i + 16]],
                add_generation_prompt=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
            ).to(model.device)
            peft.generate(
                **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
    seconds = time.perf_counter() - started
    peft.unload()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU (smoke test)")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32, help="GLMFT_CHAT__MAX_BATCH")
    parser.add_argument("--baseline-prompts", type=int, default=32)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no GPU: run with --tiny for the CPU smoke test")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
    slug = "tiny-cpu" if args.tiny else device.lower().replace(" ", "-")
    out_file = args.out or RESULTS / f"eval_bench_{slug}.json"
    report: dict[str, Any] = {
        "bench": "eval_bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "model": "tiny GLM-4" if args.tiny else "GLM-4-9B shape, random bf16 weights",
        "settings": {k: str(v) for k, v in vars(args).items()} | {"out": str(out_file)},
        "results": {},
    }
    results = report["results"]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        tokenizer_dir = build_tiny_model(root / "tiny", seed=0)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
        started = time.perf_counter()
        model = save_model(args.tiny, tokenizer_dir, root / "model")
        specs = write_lora(root / "adapters", model.config, args.adapters)
        results["build_s"] = round(time.perf_counter() - started, 1)
        settings = Settings(
            home=root / "home",
            broker_url="memory://",
            models={MODEL: BaseModelEntry(path=root / "model")},
            chat=ChatSettings(max_batch=args.max_batch, max_adapters=args.adapters + 1),
            allow_anonymous=True,
        )
        app = create_app(settings)
        with TestClient(app) as client:
            with Session(app.state.engine) as session:
                for spec in specs:
                    session.add(
                        Adapter(
                            id=spec.name,
                            tenant_id=settings.default_tenant,
                            base_model=MODEL,
                            method="lora",
                            path=str(spec.path),
                        )
                    )
                session.commit()
            data = dataset_lines(tokenizer, args.prompts, args.prompt_tokens)
            upload = client.post("/datasets", files={"file": ("eval.jsonl", data)})
            upload.raise_for_status()
            dataset = upload.json()["id"]
            names = [s.name for s in specs]
            run_evaluation(client, names[:1], dataset, 4)  # warm-up: model and adapter loads
            run = run_evaluation(client, names, dataset, args.new_tokens)
            with Session(app.state.engine) as session:
                outputs = session.exec(
                    select(EvaluationOutput).where(EvaluationOutput.evaluation_id == run["id"])
                ).all()
                references = {
                    s.index: s.reference
                    for s in session.exec(
                        select(EvaluationSample).where(EvaluationSample.evaluation_id == run["id"])
                    ).all()
                }
            tokens = sum(o.completion_tokens for o in outputs)
            scoring = time.perf_counter()
            for output in outputs:
                score_texts([output.text], [references[output.index]])
            results["evaluation"] = {
                "answers": len(outputs),
                "tokens": tokens,
                "seconds": round(run["seconds"], 2),
                "tokens_per_s": round(tokens / run["seconds"], 1),
                "scoring_cpu_s": round(time.perf_counter() - scoring, 2),
            }
            prompts = [
                json.loads(line)["messages"][0]["content"]
                for line in data.decode().splitlines()[: args.baseline_prompts]
            ]
        app.state.chat.close()
        seconds = upstream(model, tokenizer, specs[0].path, prompts, args.new_tokens)
        per_answer = seconds / len(prompts)
        results["upstream"] = {
            "answers": len(prompts),
            "seconds": round(seconds, 2),
            "extrapolated_s": round(per_answer * args.prompts * args.adapters, 1),
        }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ours, theirs = results["evaluation"], results["upstream"]
    print(f"eval_bench on {device} ({report['model']})")
    print(
        f"{args.prompts} prompts x {args.new_tokens} tokens x {args.adapters} adapters: "
        f"{ours['seconds']} s, {ours['tokens_per_s']} output tokens/s "
        f"(scoring {ours['scoring_cpu_s']} s of CPU)"
    )
    print(
        f"upstream PeftModel.generate, batches of 16: {theirs['seconds']} s for "
        f"{theirs['answers']} answers; {theirs['extrapolated_s']} s extrapolated "
        f"(x{theirs['extrapolated_s'] / ours['seconds']:.1f})"
    )
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
