"""Chat engine benchmark: adapter hot-load time and output tokens/s with many adapters in flight.

On a GPU it builds a GLM-4-9B-shaped model (``GlmConfig`` defaults: 40 layers, hidden 4096,
32 heads, 2 KV groups) with random bf16 weights, writes ``--adapters`` LoRA adapters of the demo's
size (r 8, alpha 32, q/k/v) with random weights to local disk, and measures through
``serving.engine.Engine``:

* ``load``: each adapter's load into the running engine (p50/p99 ms; target p50 <= 300 ms);
* ``base``: ``--requests`` requests to the base model at once;
* ``adapters-8`` / ``adapters-32``: the same requests spread over 8 and 32 distinct adapters
  (target: >= 90% of the base's output tokens/s with 32);
* ``upstream``: the upstream ``inference.py`` way, ``PeftModel.generate`` one request at a time
  (the baseline, measured in the same run).

Greedy decoding of ``--new-tokens`` tokens after a ``--prompt-tokens`` prompt; a random model
rarely emits an end token, so every request runs to its length. ``--tiny`` runs the same code on
the tiny CPU model (a smoke test of this script). Prints a table and writes
``bench/results/chat_bench_<device>.json``.

Run: ``python bench/chat_bench.py`` (GPU) or ``python bench/chat_bench.py --tiny``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmConfig

from serving.adapters import AdapterSpec
from serving.engine import Engine, Request
from serving.events import Event
from serving.params import GenerationParams
from trainer.tiny import build_tiny_model

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(tiny: bool, tokenizer_dir: Path) -> Any:
    if tiny:
        return AutoModelForCausalLM.from_pretrained(tokenizer_dir, dtype=torch.float32)
    config = GlmConfig()  # glm-4-9b-chat's shape
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


def write_adapters(model: Any, root: Path, count: int) -> list[AdapterSpec]:
    """``count`` demo-sized LoRA adapters with random (non-zero) weights."""
    config = LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"]
    )
    peft = get_peft_model(model, config)
    specs = []
    for i in range(count):
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.02)
        path = root / f"adapter-{i:02d}"
        peft.save_pretrained(path)
        specs.append(AdapterSpec.from_dir(f"adapter-{i:02d}", path))
    peft.unload()  # the base model back, without LoRA layers
    return specs


def run_requests(
    engine: Engine, adapters: list[AdapterSpec | None], prompt: list[int], new_tokens: int
) -> dict[str, float]:
    """All requests at once; output tokens/s over the wall time until the last one ends."""
    params = GenerationParams(max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0)
    done = threading.Semaphore(0)
    results: list[Event] = []

    def finished(event: Event) -> None:
        if event.kind != "delta":
            results.append(event)
            done.release()

    started = time.perf_counter()
    for adapter in adapters:
        engine.submit(Request(prompt, params, finished, adapter=adapter))
    for _ in adapters:
        done.acquire()
    wall = time.perf_counter() - started
    errors = [e.message for e in results if e.kind == "error"]
    if errors:
        raise RuntimeError(errors[0])
    tokens = sum(e.result.completion_tokens for e in results if e.result)
    n = len(adapters)
    return {"requests": n, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def upstream(
    model: Any, spec: AdapterSpec, prompt: list[int], new_tokens: int, n: int
) -> dict[str, float]:
    """PeftModel.generate, one request at a time (the upstream inference.py path)."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, spec.path)
    ids = torch.tensor([prompt], device=model.device)
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for _ in range(n):
            out = peft.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
            tokens += out.shape[1] - ids.shape[1]
    wall = time.perf_counter() - started
    peft.unload()
    return {"requests": n, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU (smoke test)")
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no GPU: run with --tiny for the CPU smoke test")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
    slug = "tiny-cpu" if args.tiny else device.lower().replace(" ", "-")
    out_file = args.out or RESULTS / f"chat_bench_{slug}.json"
    report: dict[str, Any] = {
        "bench": "chat_bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device,
        "model": "tiny GLM-4" if args.tiny else "GLM-4-9B shape, random bf16 weights",
        "settings": vars(args) | {"out": str(out_file)},
        "results": {},
    }

    def save() -> None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer_dir = build_tiny_model(root / "tiny", seed=0)  # the GLM-4 tokenizer layout
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
        t0 = time.perf_counter()
        model = build_model(args.tiny, tokenizer_dir)
        report["results"]["build_s"] = round(time.perf_counter() - t0, 1)
        specs = write_adapters(model, root / "adapters", args.adapters)
        engine = Engine(model, tokenizer, max_batch=args.requests, max_adapters=args.adapters + 1)
        prompt = [int(t) for t in torch.randint(100, 1000, (args.prompt_tokens,))]
        results = report["results"]
        run_requests(engine, [None] * 2, prompt, 8)  # warm-up

        loads = []
        for spec in specs:
            loaded = engine.load(spec).result(600)
            loads.append(loaded.load_ms)
        results["load_ms"] = {
            "p50": round(statistics.median(loads), 1),
            "p99": round(percentile(loads, 0.99), 1),
            "first": round(loads[0], 1),
            "all": [round(ms, 1) for ms in loads],
            "bytes": engine.loaded()[specs[0].name].nbytes,
        }
        save()
        n = args.requests
        cases: dict[str, list[AdapterSpec | None]] = {
            "base": [None] * n,
            "adapters-8": [specs[i % min(8, len(specs))] for i in range(n)],
            f"adapters-{min(32, len(specs))}": [specs[i % min(32, len(specs))] for i in range(n)],
        }
        for name, adapters in cases.items():
            run = run_requests(engine, adapters, prompt, args.new_tokens)
            results[name] = {k: round(v, 2) for k, v in run.items()}
            save()
        engine.close()
        if torch.cuda.is_available():
            results["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        run = upstream(model, specs[0], prompt, args.new_tokens, 2)
        results["upstream"] = {k: round(v, 2) for k, v in run.items()}
        save()

    base = results["base"]["tokens_per_s"]
    print(f"chat_bench on {device} ({report['model']})")
    print(f"adapter load: p50 {results['load_ms']['p50']} ms, p99 {results['load_ms']['p99']} ms")
    print(f"{'case':<14}{'requests':>9}{'tokens':>8}{'seconds':>9}{'tok/s':>10}{'x base':>8}")
    for name in (*cases, "upstream"):
        r = results[name]
        print(
            f"{name:<14}{r['requests']:>9}{r['tokens']:>8}{r['seconds']:>9.2f}"
            f"{r['tokens_per_s']:>10.1f}{r['tokens_per_s'] / base:>8.2f}"
        )
    print(f"wrote {out_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
