"""GPU training benchmark: the real ``trainer.finetune`` pipeline on a GLM-4-9B-shaped random model.

What it does, in one run:

1. builds a random ``GlmForCausalLM`` with transformers' ``GlmConfig()`` defaults (the glm-4-9b-chat
   shape: 40 layers, hidden 4096, 32 heads, 2 KV groups, FFN 13696, vocab 151,552; ``--layers``,
   ``--hidden-size`` ... shrink it) in bf16 directly on the device, and saves it once, with the tiny
   GLM-4 tokenizer (``trainer.tiny.build_tokenizer()``; its ids are < 2014, so any vocab works),
   to ``WORK/model-L<layers>``; a separate, smaller one for ZeRO-3 (``--sft-layers``);
2. writes two synthetic datasets (``train_bench_setup.py``; ``python bench/train_bench_setup.py
   DIR`` writes them alone): ``adgen``, AdvertiseGen-like (prompt ``类型#裙*版型#宽松*...`` of
   21-46 tokens, answer 110 +- 30 tokens under that tokenizer), and ``chat``, multi-turn chats
   of 2,048-4,096 tokens;
3. runs ``trainer.finetune.main`` for each method in a fresh process (``torchrun`` for ZeRO-3),
   with configs derived from the upstream ones (configs/lora.yaml, ptuning_v2.yaml, sft.yaml +
   ds_zero_3.json): only ``max_steps``, ``logging_steps``, eval off, no test-set prediction and a
   single save at the end are changed for the upstream methods, so the upstream settings ARE
   the baseline; the ``*_fast`` / ``*_lean`` methods add glmft's switches
   (``train_bench_setup.METHODS`` says what each changes);
4. records per method: peak ``torch.cuda.max_memory_allocated`` (read in the trainer process, on
   every rank) next to the trainer's own estimate (``trainer.memory``), steady-state non-pad
   tokens/s and step time (median of the ``step`` events after warm-up), loss first -> last
   (must be finite), model FLOP utilisation, time from ``started`` to the first logged step,
   a two-step profile (GPU busy share, kernel time by kind) of the ``--profile`` methods, and for
   ZeRO-3 that the saved checkpoint reloads in a NEW process;
5. compares lora_fast's logged losses with lora_bs16's (same batches: packing and the chunked
   loss must not change the loss), checks the training-speed targets, prints tables and writes
   JSON to ``$OUT`` (when set) and ``bench/results/train_bench_<device>[_<tag>].json``.

Run on a GPU box (one GPU for LoRA / P-Tuning v2, two for ZeRO-3)::

    TORCH_CUDA_ARCH_LIST=9.0 python bench/train_bench.py        # the single-GPU methods
    TORCH_CUDA_ARCH_LIST=9.0 python bench/train_bench.py --gpus 2 \
        --methods sft_zero3,sft_zero3_fast,sft_offload,sft_offload_fast

CPU smoke test (tiny shape)::

    python bench/train_bench.py --device cpu --layers 2 --sft-layers 2 --hidden-size 64 \
        --heads 4 --intermediate-size 128 --vocab-size 2048 --virtual-tokens 16 --max-steps 10 \
        --sft-steps 10 --offload-steps 4 --chat-rows 20 --train-rows 200 --dataloader-workers 0 \
        --lean-budget-gib 0.001 --gpus 2 --methods lora,lora_bs16,lora_fast,lora_lean,...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from train_bench_process import reload_check, run_process, worker  # noqa: E402
from train_bench_report import (  # noqa: E402
    checks_table,
    device_info,
    loss_parity,
    peak_tflops_for,
    slug,
    summarize,
    table,
    target_checks,
)
from train_bench_setup import (  # noqa: E402
    METHODS,
    SFT_METHODS,
    build_model,
    matmul_params,
    method_config,
    write_data,
)

from worker.launcher import threads_per_rank  # noqa: E402

# performance.md anchors (H100 80GB HBM3, upstream pipeline, AdvertiseGen-like data).
ANCHORS = {
    "lora": {
        "tokens_per_second": 392,
        "step_s": 0.368,
        "peak_gib": 19.5,
        "what": "upstream pipeline, batch 1, no checkpointing",
    },
    "lora_bs4": {
        "tokens_per_second": 1596,
        "step_s": 0.354,
        "peak_gib": 26.1,
        "what": "upstream pipeline, batch 4, no checkpointing",
    },
    "ptuning_v2": {"peak_gib_published": 21.4, "what": "upstream README, 8x A100 demo"},
    "sft_zero3": {
        "tokens_per_second_per_gpu": 2137,
        "step_s": 0.479,
        "peak_gib": 33.3,
        "what": "12 layers, 2 GPUs (H200), batch 1 x 1024 random tokens, checkpointing",
    },
}


# ----------------------------------------------------------------------------------------------
# orchestration
# ----------------------------------------------------------------------------------------------


def run_method(
    method: str,
    args: argparse.Namespace,
    work: Path,
    data: dict[str, Any],
    model: dict[str, Any],
    deadline: float,
    peak_tflops: float | None,
) -> dict[str, Any]:
    data_dir = Path(data["path"])
    out_dir = work / "runs" / method
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    config = method_config(method, args, model, out_dir)
    config_path = work / f"{method}.yaml"
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1))  # JSON is YAML
    result = out_dir / "peak"
    trainer_args = [
        str(data_dir),
        model["path"],
        str(config_path),
        "no",
        "--output-dir",
        str(out_dir),
    ]
    world = 1
    env = dict(os.environ)
    if args.no_cudnn_sdp:
        env["GLMFT_BENCH_DISABLE_CUDNN_SDP"] = "1"
    if args.profile_step and method in args.profile:
        env["GLMFT_BENCH_PROFILE_STEP"] = str(args.profile_step)
    if method not in SFT_METHODS and args.gpu_count > 1 and "CUDA_VISIBLE_DEVICES" not in env:
        # a plain `python -m trainer.finetune` on a multi-GPU host gets HF Trainer's
        # nn.DataParallel over every visible GPU (n_gpu x the batch): pin one GPU
        env["CUDA_VISIBLE_DEVICES"] = "0"
    if method in SFT_METHODS:
        world = args.gpus
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            str(Path(__file__).resolve()),
            "_worker",
            str(result),
            "--",
            *trainer_args,
        ]
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(world)))  # CPU Adam
    else:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_worker",
            str(result),
            "--",
            *trainer_args,
        ]
    timeout = min(args.method_timeout, deadline - time.monotonic())
    record: dict[str, Any] = {
        "method": method,
        "what": METHODS[method]["what"],
        "data": data["kind"],
        "world_size": world,
        "command": " ".join(["python -m trainer.finetune", *trainer_args])
        if world == 1
        else " ".join(
            [
                f"torchrun --standalone --nproc_per_node={world}",
                "-m trainer.finetune",
                *trainer_args,
            ]
        ),
        "cudnn_sdp": not args.no_cudnn_sdp,
        "config": config,
        "model": {k: model[k] for k in ("layers", "params")},
    }
    if timeout < 30:
        record["skipped"] = "out of time"
        return record
    print(f"\n== {method}: {record['command']}", flush=True)
    rc, wall = run_process(cmd, work / f"{method}.log", timeout, env)
    record["rc"], record["wall_s"] = rc, round(wall, 1)
    record["log"] = str(work / f"{method}.log")
    ranks = sorted(out_dir.glob("peak.rank*.json"))
    per_rank = [json.loads(p.read_text()) for p in ranks]
    if per_rank and all("max_memory_allocated" in r for r in per_rank):
        record["peak_allocated_gib_per_rank"] = [
            round(r.get("max_memory_allocated", 0) / 2**30, 2) for r in per_rank
        ]
        record["peak_reserved_gib_per_rank"] = [
            round(r.get("max_memory_reserved", 0) / 2**30, 2) for r in per_rank
        ]
        record["peak_allocated_gib"] = max(record["peak_allocated_gib_per_rank"])
    if per_rank and all("max_rss" in r for r in per_rank):
        record["host_peak_rss_gib_per_rank"] = [round(r["max_rss"] / 2**30, 2) for r in per_rank]
    from trainer.contract.events import read_events

    n = matmul_params(model)
    # LoRA / prefix: forward 2N + input-gradient backward 2N; full SFT adds the weight grads (2N).
    factor = 6 if method in SFT_METHODS else 4
    ctx = data["sequence_tokens_mean"] / 2 + (config.get("peft_config") or {}).get(
        "num_virtual_tokens", 0
    )
    attn = (factor // 2) * 2 * 2 * model["layers"] * ctx * model["heads"] * model["head_dim"]
    flops_per_token = factor * n + attn
    record.update(
        summarize(read_events(out_dir), args.warmup_windows, world, flops_per_token, peak_tflops)
    )
    record["flops_per_token"] = flops_per_token
    plan = record.pop("memory_plan", None)
    if plan:
        record["memory_plan"] = plan
        record["gradient_checkpointing"] = plan.get("gradient_checkpointing")
    profile = out_dir / "profile.json"
    if profile.is_file():
        record["profile"] = json.loads(profile.read_text())
    if rc != 0:
        record["log_tail"] = (work / f"{method}.log").read_text(encoding="utf-8", errors="replace")[
            -4000:
        ]
    if method in SFT_METHODS and record.get("checkpoint") and rc == 0:
        timeout = min(args.method_timeout, deadline - time.monotonic())
        reload_result = out_dir / "reload.json"
        print(f"   reload check of {record['checkpoint']} in a new process", flush=True)
        rc2, wall2 = run_process(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_reload",
                record["checkpoint"],
                str(data_dir),
                str(reload_result),
            ],
            work / "reload.log",
            max(timeout, 30),
            env,
        )
        record["reload"] = (
            json.loads(reload_result.read_text())
            if reload_result.is_file()
            else {"ok": False, "rc": rc2, "log_tail": (work / "reload.log").read_text()[-3000:]}
        )
        record["reload"]["wall_s"] = round(wall2, 1)
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--methods",
        default="lora,lora_bs16,lora_fast,lora_lean,ptuning_v2,ptuning_fast,chat_lora,chat_fast",
        help="comma-separated: " + ", ".join(METHODS),
    )
    p.add_argument(
        "--fast-batch", type=int, default=16, help="conversations per step of the fast methods"
    )
    p.add_argument("--lean-batch", type=int, default=8, help="conversations per step of lora_lean")
    p.add_argument(
        "--lean-budget-gib",
        type=float,
        default=18.6,
        help="lora_lean's memory_budget_gib (18.6 GiB = 20 GB)",
    )
    p.add_argument(
        "--ptuning-budget-gib",
        type=float,
        default=20.49,
        help="ptuning_lean's memory_budget_gib (20.49 GiB = 22 GB)",
    )
    p.add_argument(
        "--sft-batch",
        type=int,
        default=192,
        help="conversations per packed row of sft_zero3_fast / sft_offload_fast (~30k tokens)",
    )
    p.add_argument(
        "--sft-budget-gib",
        type=float,
        default=56.0,
        help="memory_budget_gib of the fast ZeRO-3 methods (56 GiB = 60 GB, the 4x H100 limit)",
    )
    p.add_argument(
        "--profile",
        default="lora_fast,lora_lean,chat_fast,ptuning_fast",
        help="methods to profile for two steps (torch.profiler; rank 0 of multi-GPU ones)",
    )
    p.add_argument(
        "--profile-step", type=int, default=20, help="first profiled step (0: no profiling)"
    )
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "glmft-train-bench",
        help="scratch dir for models, data, runs (the 40-layer model is 18.8 GB)",
    )
    p.add_argument("--layers", type=int, default=40, help="layers of the LoRA/P-Tuning model")
    p.add_argument(
        "--sft-layers",
        type=int,
        default=12,
        help="layers of the sft_zero3* model (sft_offload* train the --layers model)",
    )
    p.add_argument("--hidden-size", type=int, help="override GlmConfig's 4096 (CPU smoke tests)")
    p.add_argument("--heads", type=int, help="override GlmConfig's 32 attention heads")
    p.add_argument("--intermediate-size", type=int, help="override GlmConfig's 13696")
    p.add_argument(
        "--vocab-size",
        type=int,
        help="override GlmConfig's 151552 (>= 2014, the tiny tokenizer's size)",
    )
    p.add_argument("--virtual-tokens", type=int, help="override P-Tuning v2's 512")
    p.add_argument("--gpus", type=int, default=2, help="ranks for sft_zero3")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--offload-steps", type=int, default=10, help="max_steps of sft_offload*")
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument(
        "--warmup-windows",
        type=int,
        default=2,
        help="logging windows left out of the steady-state medians",
    )
    p.add_argument(
        "--dataloader-workers",
        type=int,
        help="override the configs' dataloader_num_workers (upstream 16)",
    )
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--chat-rows", type=int, default=400)
    p.add_argument("--dev-rows", type=int, default=16)
    p.add_argument("--method-timeout", type=float, default=240.0, help="seconds per method")
    p.add_argument(
        "--deadline",
        type=float,
        default=3000.0,
        help="seconds for the whole run; methods that would start later are skipped",
    )
    p.add_argument(
        "--no-cudnn-sdp",
        action="store_true",
        help="disable the cuDNN SDPA backend in the trainer processes "
        "(pytorch/pytorch#196678: NaN grad_q with a padding mask)",
    )
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--keep", action="store_true", help="keep the work dir's runs (not the model)")
    p.add_argument(
        "--out",
        type=Path,
        default=os.environ.get("OUT") or None,
        help="also write the JSON (and logs) here (default $OUT)",
    )
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    if argv[:1] == ["_reload"]:
        return reload_check(argv[1:])
    args = parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.deadline
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible (use --device cpu)")
    info = device_info(args)
    args.gpu_count = info["gpu_count"]
    args.profile = {m.strip() for m in args.profile.split(",")}
    print(json.dumps(info), flush=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    from trainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    datasets: dict[str, dict[str, Any]] = {}
    for kind in sorted({METHODS[m]["data"] for m in methods}):
        rows = args.chat_rows if kind == "chat" else args.train_rows
        datasets[kind] = write_data(work / "data" / kind, tokenizer, kind, rows, args.dev_rows)
        print(f"data {kind}:", json.dumps(datasets[kind]), flush=True)

    models: dict[int, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    peak = peak_tflops_for(info["device"]) if args.device == "cuda" else None
    for method in methods:
        layers = args.sft_layers if method.startswith("sft_zero3") else args.layers
        if layers not in models:
            print(f"\n== building a {layers}-layer GLM-4-shaped model", flush=True)
            models[layers] = build_model(args, layers, work / f"model-L{layers}")
            print("model:", json.dumps(models[layers]), flush=True)
        if method in SFT_METHODS and args.device == "cuda" and info["gpu_count"] < args.gpus:
            results.append(
                {
                    "method": method,
                    "skipped": f"needs {args.gpus} GPUs, {info['gpu_count']} visible",
                }
            )
            continue
        record = run_method(
            method,
            args,
            work,
            datasets[METHODS[method]["data"]],
            models[layers],
            deadline,
            peak,
        )
        results.append(record)
        print(table([record]), flush=True)
        if not args.keep and record.get("checkpoint"):
            shutil.rmtree(Path(record["checkpoint"]), ignore_errors=True)

    parity = loss_parity(results, "lora_fast", "lora_bs16")
    checks = target_checks(results)
    report = {
        "benchmark": "train_bench",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "bench/train_bench.py", *argv]),
        "environment": info,
        "data": datasets,
        "models": list(models.values()),
        "loss_parity": parity,
        "targets": checks,
        "anchors": ANCHORS,
        "results": results,
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    text = json.dumps(report, ensure_ascii=False, indent=1, default=str)
    name = f"train_bench_{slug(info['device'])}{'_' + slug(args.tag) if args.tag else ''}.json"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / name).write_text(text, encoding="utf-8")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(text, encoding="utf-8")
    print("\n" + table(results))
    if checks:
        print("\n" + checks_table(checks))
    if parity:
        print(
            f"\nloss parity {parity['runs'][0]} vs {parity['runs'][1]}: max relative "
            f"difference {parity['max_relative_difference']:.4f} "
            f"over steps {parity['logged_steps']}"
        )
    print(f"\nwrote {args.results_dir / name}" + (f" and {args.out / name}" if args.out else ""))
    ok = all(
        r.get("skipped")
        or (r.get("rc") == 0 and r.get("loss_finite") and r.get("reload", {"ok": True}).get("ok"))
        for r in results
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
