"""Serving engine benchmark: output tokens/s with many adapters, hot-load time, time to first
token under load, and an evaluation-sized run, beside transformers' own ``generate`` measured in
the same process.

On a GPU it builds a GLM-4-9B-shaped model (``GlmConfig`` defaults: 40 layers, hidden 4096, 32
heads, 2 KV groups, vocabulary 151,552) with random bf16 weights, writes LoRA adapters of the
demo's size (r 8, alpha 32, q/k/v) and P-Tuning v2 prefixes of the demo's length (512 virtual
tokens) with random weights to local disk, and drives ``serving.engine.Engine``:

* ``generate``: transformers' ``generate`` on ``--requests`` prompts at once (the baseline);
* ``torch-ops``: the same requests through an engine whose layers run their elementwise work
  as torch operations (``fused_ops=False``), the engine before :mod:`serving.fused`;
* ``base``: the same requests through the engine;
* ``profile-torch-ops``, ``profile``, ``profile-lora``: 32 new tokens of the same requests
  under torch's profiler (the last with 32 adapters): the GPU's kernel time a step against the
  step's wall time;
* ``lora-32``: the same requests, each with its own adapter (target: >= 90% of ``base``);
* ``ptuning``: the same requests over 4 prefixes (target: >= 80% of ``base``);
* ``hot-load``: ``--cycle`` adapters loaded in turn into a pool with fewer slots while 16 other
  requests decode (target: p50 <= 50 ms, p99 <= 150 ms);
* ``ttft``: time to the first token of a request that arrives while 31 others decode (target:
  p50 <= 200 ms);
* ``eval``: ``--eval-prompts`` prompts x 128 new tokens for 4 adapters at once (target: under
  2 minutes for 1,000).

Before timing, ``checks`` compares the Triton attention kernel with the plain torch one, each
kernel of :mod:`serving.fused` with the model's torch code, and the engine's greedy tokens (with
and without those kernels) with transformers' (base, LoRA through PEFT) on a 4-layer model of
the same shape. Greedy decoding with the repetition penalty off; a random model seldom emits an end
token, so nearly every request runs to its length (completion tokens are counted, not assumed).
``--tiny`` runs every phase on the tiny CPU model (a smoke test of this script). Prints a table
and writes ``<out>/chat_bench_<device>.json``.

Run: ``python bench/chat_bench.py [--out DIR]`` (GPU) or ``python bench/chat_bench.py --tiny``.
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
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoTokenizer

from bench.chat_checks import check_attention, check_fused, check_tokens
from bench.chat_fixtures import Collector, build_model, prompts, write_lora, write_prefixes
from serving.adapters import AdapterSpec
from serving.engine import Engine
from serving.events import Event
from serving.params import GenerationParams
from serving.requests import Request
from trainer.tiny import build_tiny_model

RESULTS = Path(__file__).resolve().parent / "results"


def run_batch(
    engine: Engine,
    batch: list[list[int]],
    specs: Sequence[AdapterSpec | None],
    new_tokens: int,
    timeout: float = 600,
    *,
    stream: bool = True,
) -> dict[str, Any]:
    params = GenerationParams(max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0)
    collector = Collector(len(batch))
    steps = engine.steps
    started = time.perf_counter()
    for i, (prompt, spec) in enumerate(zip(batch, specs, strict=True)):
        request = Request(prompt, params, collector.callback(i), adapter=spec, stream=stream)
        engine.submit(request)
    if not collector.done.wait(timeout):
        raise TimeoutError(f"{collector.left} of {len(batch)} requests unanswered")
    elapsed = time.perf_counter() - started
    if collector.errors:
        raise RuntimeError(f"{len(collector.errors)} errors, first: {collector.errors[0]}")
    return {
        "requests": len(batch),
        "seconds": round(elapsed, 3),
        "output_tokens": collector.tokens,
        "tokens_per_second": round(collector.tokens / elapsed, 1),
        "engine_steps": engine.steps - steps,
        "ms_per_step": round(elapsed * 1000 / max(engine.steps - steps, 1), 2),
        "texts": collector.texts,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


class Background:
    """``rows`` requests kept in flight (a new one as each ends) until stopped."""

    def __init__(self, engine: Engine, rows: int, vocab: int, new_tokens: int) -> None:
        self.engine, self.vocab, self.new_tokens = engine, vocab, new_tokens
        self.params = GenerationParams(
            max_new_tokens=new_tokens, temperature=0, repetition_penalty=1.0
        )
        self.stopped = threading.Event()
        self.tokens = 0
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        for i in range(rows):
            self._submit(i)

    def _submit(self, seed: int) -> None:
        prompt = prompts(1, 64, self.vocab, seed=1000 + seed)[0]

        def on_event(event: Event) -> None:
            if event.kind == "delta":
                return
            with self._lock:
                if event.result is not None:
                    self.tokens += event.result.completion_tokens
            if not self.stopped.is_set():
                self._submit(seed + 1)

        request = Request(prompt, self.params, on_event)
        with self._lock:
            self.requests.append(request)
        self.engine.submit(request)

    def stop(self) -> None:
        """Cancel what still runs; return once the engine is idle."""
        self.stopped.set()
        with self._lock:
            for request in self.requests:
                request.cancelled = True
        deadline = time.monotonic() + 120
        while (self.engine.busy or self.engine.queued) and time.monotonic() < deadline:
            time.sleep(0.01)


# ---- the phases -------------------------------------------------------------------------------


def phase_generate(model: Any, batch: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """transformers' ``generate`` on the batch at once (equal prompt lengths: no padding)."""
    device = next(model.parameters()).device
    ids = torch.tensor(batch, device=device)
    options = {"do_sample": False, "repetition_penalty": 1.0, "pad_token_id": 0}
    with torch.inference_mode():
        model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, **options)  # warm-up
        _sync()
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **options)
        _sync()
    elapsed = time.perf_counter() - started
    tokens = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    return {
        "requests": len(batch),
        "seconds": round(elapsed, 3),
        "output_tokens": tokens,
        "tokens_per_second": round(tokens / elapsed, 1),
        "ms_per_step": round(elapsed * 1000 / new_tokens, 2),
    }


def phase_hot_load(
    engine: Engine, specs: list[AdapterSpec], rounds: int, vocab: int
) -> dict[str, Any]:
    background = Background(engine, 16, vocab, new_tokens=64)
    times = []
    try:
        started = time.perf_counter()
        for i in range(rounds * len(specs)):
            spec = specs[i % len(specs)]
            began = time.perf_counter()
            engine.load(spec).result(60)
            times.append((time.perf_counter() - began) * 1000)
        elapsed = time.perf_counter() - started
    finally:
        background.stop()
    in_memory = [a.load_ms for a in engine.loaded().values() if a.spec.kind == "lora"]
    return {
        **percentiles(times),
        "adapters": len(specs),
        "slots": engine.max_adapters,
        "background_tokens_per_second": round(background.tokens / elapsed, 1),
        "engine_load_ms_p50": round(statistics.median(in_memory), 2) if in_memory else None,
    }


def phase_ttft(engine: Engine, vocab: int, probes: int) -> dict[str, Any]:
    background = Background(engine, 31, vocab, new_tokens=4000)
    time.sleep(1.0)  # all 31 decoding
    waits = []
    params = GenerationParams(max_new_tokens=2, temperature=0, repetition_penalty=1.0)
    try:
        for i, prompt in enumerate(prompts(probes, 64, vocab, seed=77)):
            first = threading.Event()
            submitted = time.perf_counter()
            engine.submit(Request(prompt, params, _setter(first)))
            if not first.wait(60):
                raise TimeoutError(f"probe {i}: no first token in 60 s")
            waits.append((time.perf_counter() - submitted) * 1000)
            time.sleep(0.1)
    finally:
        background.stop()
    return {**percentiles(waits), "decoding_meanwhile": 31}


def phase_profile(
    engine: Engine,
    batch: list[list[int]],
    new_tokens: int,
    specs: Sequence[AdapterSpec | None] | None = None,
) -> dict[str, Any]:
    """The batch (with ``specs``' adapters) through the engine under torch's profiler: the
    GPU's kernel time a step against the step's wall time, and the kernels that take the most."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = run_batch(engine, batch, specs or [None] * len(batch), new_tokens)
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    steps = max(result["engine_steps"], 1)
    busy_us = sum(e.self_device_time_total for e in kernels)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {
        "ms_per_step": result["ms_per_step"],
        "gpu_ms_per_step": round(busy_us / 1000 / steps, 3),
        "kernels_per_step": round(sum(e.count for e in kernels) / steps, 1),
        "top_kernels": [
            {
                "name": e.key[:90],
                "ms_per_step": round(e.self_device_time_total / 1000 / steps, 3),
                "calls_per_step": round(e.count / steps, 1),
            }
            for e in top
        ],
    }


def _setter(flag: threading.Event) -> Callable[[Event], None]:
    return lambda _event: flag.set()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model (smoke test)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--cycle", type=int, default=100, help="adapters cycled in hot-load")
    parser.add_argument("--slots", type=int, default=48, help="adapter slots of the engine")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--eval-prompts", type=int, default=1000)
    parser.add_argument("--prefix-tokens", type=int, default=512)
    parser.add_argument(
        "--phases",
        default="checks,generate,torch-ops,profile-torch-ops,base,profile,lora,profile-lora,"
        "ptuning,hot-load,ttft,eval",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.requests, args.new_tokens, args.cycle, args.slots = 8, 16, 12, 8
        args.eval_prompts, args.prefix_tokens, args.max_batch = 16, 16, 32
    phases = set(args.phases.split(","))
    if args.tiny:  # the profiles read the GPU's kernels
        phases -= {"profile", "profile-torch-ops", "profile-lora"}
    device = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    report: dict[str, Any] = {
        "device": device,
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "phases": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out_file = args.out / f"chat_bench_{device.lower().replace(' ', '-')}.json"

    def record(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if name not in phases:
            return None
        print(f"--- {name}", flush=True)
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result = {k: v for k, v in result.items() if k != "texts"}
        result["phase_seconds"] = round(time.perf_counter() - started, 1)
        if torch.cuda.is_available():
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
        report["phases"][name] = result
        print(json.dumps(result), flush=True)
        out_file.write_text(json.dumps(report, indent=2))
        return result

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        tokenizer_dir = build_tiny_model(root / "tiny", seed=0)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        target = torch.device("cpu" if args.tiny else "cuda")
        record("checks", lambda: {
            "attention": check_attention(target),
            "fused": check_fused(target),
            "tokens": check_tokens(tokenizer, args.tiny, tokenizer_dir, root),
        })  # fmt: skip
        model = build_model(args.tiny, tokenizer_dir)
        config = model.config
        vocab = config.vocab_size
        batch = prompts(args.requests, args.prompt_tokens, vocab)
        base_rate = record("generate", lambda: phase_generate(model, batch, args.new_tokens))
        started = time.perf_counter()
        loras = write_lora(root / "lora", config, max(args.cycle, args.requests))
        prefixes = write_prefixes(root / "prefix", config, 4, args.prefix_tokens)
        report["adapter_files_seconds"] = round(time.perf_counter() - started, 1)
        torch_ops = None
        if "torch-ops" in phases:  # the same engine with its elementwise work as torch operations
            plain = Engine(
                model, tokenizer, max_batch=args.max_batch, fused_ops=False, name="plain"
            )
            try:
                run_batch(plain, batch, [None] * len(batch), args.new_tokens)  # warm-up
                torch_ops = record(
                    "torch-ops",
                    lambda: run_batch(plain, batch, [None] * len(batch), args.new_tokens),
                )
                record("profile-torch-ops", lambda: phase_profile(plain, batch, 32))
            finally:
                plain.close()
        engine = Engine(
            model, tokenizer, max_batch=args.max_batch, max_adapters=args.slots,
            name="bench",
        )  # fmt: skip
        report["engine"] = engine.capacity()
        try:
            for spec in loras[: args.requests]:
                engine.load(spec).result(120)
            report["capture_seconds"] = {
                "base": round(engine.warm().result(600), 1),
                "lora": round(engine.warm(lora=True).result(600), 1),
            }
            run_batch(engine, batch, [None] * len(batch), args.new_tokens)  # warm-up
            base = record(
                "base", lambda: run_batch(engine, batch, [None] * len(batch), args.new_tokens)
            )
            record("profile", lambda: phase_profile(engine, batch, 32))
            lora = record(
                "lora", lambda: run_batch(engine, batch, loras[: args.requests], args.new_tokens)
            )
            record("profile-lora", lambda: phase_profile(engine, batch, 32, loras[: args.requests]))
            specs = [prefixes[i % 4] for i in range(len(batch))]
            prefix = record("ptuning", lambda: run_batch(engine, batch, specs, args.new_tokens))
            for spec in loras[: args.requests]:  # the hot-load phase needs the slots free
                engine.unload(spec.name).result(60)
            record("hot-load", lambda: phase_hot_load(engine, loras[: args.cycle], 2, vocab))
            record("ttft", lambda: phase_ttft(engine, vocab, 20))
            eval_batch = prompts(args.eval_prompts, args.prompt_tokens, vocab, seed=9)
            eval_specs = [loras[i % 4] for i in range(4 * len(eval_batch))]
            evaluation = record(
                "eval",
                lambda: run_batch(
                    engine, eval_batch * 4, eval_specs, args.new_tokens, 1800, stream=False
                ),
            )
        finally:
            engine.close()
    summary = _summary(base_rate, base, lora, prefix, report["phases"], evaluation)
    if base and torch_ops and base.get("tokens_per_second") and torch_ops.get("tokens_per_second"):
        summary["base_vs_torch_ops"] = round(
            base["tokens_per_second"] / torch_ops["tokens_per_second"], 3
        )
    report["summary"] = summary
    out_file.write_text(json.dumps(report, indent=2))
    _print_table(report)
    print(f"wrote {out_file}")
    return 0


def _summary(
    upstream: dict[str, Any] | None,
    base: dict[str, Any] | None,
    lora: dict[str, Any] | None,
    prefix: dict[str, Any] | None,
    phases: dict[str, Any],
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    def rate(result: dict[str, Any] | None) -> float | None:
        return result.get("tokens_per_second") if result else None

    summary: dict[str, Any] = {"base_tokens_per_second": rate(base)}
    if rate(base) and rate(upstream):
        summary["base_vs_generate"] = round(rate(base) / rate(upstream), 2)  # type: ignore[operator]
    if rate(base):
        for name, result in (("lora_32_vs_base", lora), ("ptuning_vs_base", prefix)):
            if rate(result):
                summary[name] = round(rate(result) / rate(base), 3)  # type: ignore[operator]
    load = phases.get("hot-load", {})
    summary["hot_load_p50_ms"], summary["hot_load_p99_ms"] = load.get("p50_ms"), load.get("p99_ms")
    summary["ttft_p50_ms"] = phases.get("ttft", {}).get("p50_ms")
    if evaluation and "seconds" in evaluation:
        summary["eval_seconds"] = evaluation["seconds"]
    return summary


def _print_table(report: dict[str, Any]) -> None:
    print(f"\nchat_bench on {report['device']} ({report['date']})")
    print(f"{'phase':<10} {'tokens/s':>10} {'seconds':>9} {'ms/step':>9}  notes")
    for name, result in report["phases"].items():
        note = {k: v for k, v in result.items() if k.endswith("_ms") or k in ("error", "n")}
        print(
            f"{name:<10} {result.get('tokens_per_second', ''):>10} {result.get('seconds', ''):>9} "
            f"{result.get('ms_per_step', ''):>9}  {note}"
        )
    print("summary:", json.dumps(report.get("summary", {})))


if __name__ == "__main__":
    raise SystemExit(main())
