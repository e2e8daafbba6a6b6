"""GPU training benchmark: the real ``trainer.finetune`` pipeline on a GLM-4-9B-shaped random model.

What it does, in one run:

1. builds a random ``GlmForCausalLM`` with transformers' ``GlmConfig()`` defaults (the glm-4-9b-chat
   shape: 40 layers, hidden 4096, 32 heads, 2 KV groups, FFN 13696, vocab 151,552; ``--layers``,
   ``--hidden-size`` ... shrink it) in bf16 directly on the device, and saves it once, with the tiny
   GLM-4 tokenizer (``trainer.tiny.build_tokenizer()``; its ids are < 2014, so any vocab works),
   to ``WORK/model-L<layers>``; a separate, smaller one for ZeRO-3 (``--sft-layers``);
2. writes a synthetic AdvertiseGen-like dataset (prompt ``类型#裙*版型#宽松*...`` of 21-46 tokens,
   answer 110 +- 30 tokens under that tokenizer): ``train.jsonl`` and a small ``dev.jsonl``;
3. runs ``trainer.finetune.main`` for each method in a fresh process (``torchrun`` for ZeRO-3),
   with configs derived from the upstream ones (configs/lora.yaml, ptuning_v2.yaml, sft.yaml +
   ds_zero_3.json): only ``max_steps``, ``logging_steps``, eval off, no test-set prediction and a
   single save at the end are changed, so the upstream settings ARE the baseline;
4. records per method: peak ``torch.cuda.max_memory_allocated`` (read in the trainer process, on
   every rank), steady-state non-pad tokens/s and step time (median of the ``step`` events after
   warm-up), loss first -> last (must be finite), model FLOP utilisation, and for ZeRO-3 that the
   saved checkpoint reloads in a NEW process (``AutoModelForCausalLM.from_pretrained``, one
   forward pass, finite loss);
5. prints a table and writes JSON to ``$OUT`` (when set) and
   ``bench/results/train_bench_<device>[_<tag>].json``.

Methods (``--methods``, comma-separated):

==============  ==================================================================================
``lora``        configs/lora.yaml as is: batch 1, lr 5e-4, r=8 on q/k/v (the upstream baseline)
``lora_bs4``    the same with batch 4
``ptuning_v2``  configs/ptuning_v2.yaml: 512 virtual tokens, 2 heads, token_dim 256, batch 4
``sft_zero3``   configs/sft.yaml + configs/ds_zero_3.json on ``--gpus`` GPUs (torchrun), a
                ``--sft-layers``-layer model (the 40-layer states do not fit 2x80 GB)
==============  ==================================================================================

Run on a GPU box (single GPU for LoRA / P-Tuning v2, two GPUs for ZeRO-3)::

    TORCH_CUDA_ARCH_LIST=9.0 python bench/train_bench.py --methods lora,lora_bs4,ptuning_v2
    TORCH_CUDA_ARCH_LIST=9.0 python bench/train_bench.py --methods sft_zero3 --gpus 2 \
        --sft-layers 12

CPU smoke test (tiny shape)::

    python bench/train_bench.py --device cpu --layers 2 --hidden-size 64 --heads 4 \
        --intermediate-size 128 --vocab-size 2048 --virtual-tokens 16 --max-steps 10 \
        --dataloader-workers 0 --methods lora,ptuning_v2,sft_zero3 --gpus 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
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

# performance.md anchors (H100 80GB HBM3, upstream pipeline, AdvertiseGen-like data).
ANCHORS = {
    "lora": {"tokens_per_second": 392, "step_s": 0.368, "peak_gib": 19.5,
             "what": "upstream pipeline, batch 1, no checkpointing"},
    "lora_bs4": {"tokens_per_second": 1596, "step_s": 0.354, "peak_gib": 26.1,
                 "what": "upstream pipeline, batch 4, no checkpointing"},
    "ptuning_v2": {"peak_gib_published": 21.4, "what": "upstream README, 8x A100 demo"},
    "sft_zero3": {"tokens_per_second_per_gpu": 2137, "step_s": 0.479, "peak_gib": 33.3,
                  "what": "12 layers, 2 GPUs (H200), batch 1 x 1024 random tokens, checkpointing"},
}
# Dense bf16 peak, TFLOP/s, for model FLOP utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

_ATTRS = {
    "类型": ("裙", "裤", "上衣", "外套", "衬衫", "毛衣", "卫衣", "连衣裙"),
    "版型": ("宽松", "修身", "直筒", "A字", "显瘦"),
    "风格": ("性感", "简约", "复古", "清新", "休闲", "通勤", "街头"),
    "图案": ("线条", "条纹", "格子", "印花", "纯色", "刺绣"),
    "材质": ("牛仔布", "棉", "雪纺", "真丝", "针织"),
    "颜色": ("白色", "黑色", "蓝色", "红色", "粉色"),
    "裙长": ("短裙", "中长裙", "长裙"),
    "领型": ("圆领", "v领", "翻领", "立领"),
    "袖长": ("短袖", "长袖", "七分袖", "无袖"),
    "季节": ("夏天", "冬天", "春秋"),
}
_CHARS = ("这款裙子采用宽松的版型设计穿着舒适自在性感的线条图案时尚大方面料柔软亲肤搭配百搭单品凸显"
          "气质简约清新复古优雅通勤休闲修身显瘦腰身领口袖子细节精致")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def _ntok(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def make_rows(tokenizer: Any, n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """AdvertiseGen-like rows sized in tokens of ``tokenizer``: prompt 21-46, answer 110 +- 30."""
    rng = random.Random(seed)
    rows, prompt_lens, answer_lens = [], [], []
    ratio = 1.2  # tokens per character, refined as we go
    for _ in range(n):
        target_prompt = rng.randint(21, 46)
        keys = list(_ATTRS)
        rng.shuffle(keys)
        parts: list[str] = []
        for key in keys:
            parts.append(f"{key}#{rng.choice(_ATTRS[key])}")
            if _ntok(tokenizer, "*".join(parts)) >= target_prompt:
                break
        prompt = "*".join(parts)
        target_answer = max(40, min(250, round(rng.gauss(110, 30))))
        chars = max(1, round(target_answer / ratio))
        answer = "".join(rng.choice(_CHARS) for _ in range(chars)) + "。"
        got = _ntok(tokenizer, answer)
        ratio = 0.9 * ratio + 0.1 * (got / (chars + 1))
        prompt_lens.append(_ntok(tokenizer, prompt))
        answer_lens.append(got)
        rows.append({"messages": [{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer}]})
    stats = {"rows": n, "prompt_tokens_mean": statistics.mean(prompt_lens),
             "prompt_tokens_min": min(prompt_lens), "prompt_tokens_max": max(prompt_lens),
             "answer_tokens_mean": statistics.mean(answer_lens),
             "answer_tokens_stdev": statistics.pstdev(answer_lens)}
    return rows, stats


def write_data(data_dir: Path, tokenizer: Any, train_rows: int, dev_rows: int) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    train, stats = make_rows(tokenizer, train_rows, seed=1)
    dev, _ = make_rows(tokenizer, dev_rows, seed=2)
    for name, rows in (("train.jsonl", train), ("dev.jsonl", dev)):
        with (data_dir / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Sequence lengths as the trainer sees them (chat template + end-of-turn token).
    from trainer.template import SpecialTokens, encode_train
    special = SpecialTokens.from_tokenizer(tokenizer)
    lengths = [len(encode_train(tokenizer, special, r["messages"], combine=True,
                                max_length=1025).input_ids) for r in train[:200]]
    stats["sequence_tokens_mean"] = statistics.mean(lengths)
    stats["sequence_tokens_max"] = max(lengths)
    return stats


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------

def glm_config(args: argparse.Namespace, layers: int, tokenizer: Any) -> Any:
    from transformers import GlmConfig

    from trainer.tiny import STOP_TOKENS

    overrides: dict[str, Any] = {"num_hidden_layers": layers}
    if args.hidden_size:
        overrides["hidden_size"] = args.hidden_size
    if args.heads:
        overrides["num_attention_heads"] = args.heads
    if args.intermediate_size:
        overrides["intermediate_size"] = args.intermediate_size
    if args.vocab_size:
        overrides["vocab_size"] = args.vocab_size
    config = GlmConfig(**overrides)
    if args.hidden_size or args.heads:
        config.head_dim = config.hidden_size // config.num_attention_heads
    config.pad_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    config.bos_token_id = None
    config.use_cache = False
    return config


def build_model(args: argparse.Namespace, layers: int, out_dir: Path) -> dict[str, Any]:
    """Random bf16 model built on ``args.device`` and saved once (reused by every method)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from trainer.tiny import build_tokenizer

    marker = out_dir / "bench_model.json"
    if marker.is_file():
        return dict(json.loads(marker.read_text()), reused=True)
    t0 = time.perf_counter()
    tokenizer = build_tokenizer()
    config = glm_config(args, layers, tokenizer)
    torch.manual_seed(0)
    device = torch.device(args.device)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    params = sum(p.numel() for p in model.parameters())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    t1 = time.perf_counter()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    t_save = time.perf_counter() - t1
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    info = {"layers": layers, "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim, "vocab_size": config.vocab_size, "params": params,
            "bytes_on_disk": size, "build_s": round(t_build, 2), "save_s": round(t_save, 2),
            "path": str(out_dir)}
    marker.write_text(json.dumps(info))
    return dict(info, reused=False)


def matmul_params(info: dict[str, Any]) -> int:
    """Parameters that take part in matmuls (all but the input embedding)."""
    h, ffn, layers = info["hidden_size"], info["intermediate_size"], info["layers"]
    q = info["heads"] * info["head_dim"]
    kv = info["kv_heads"] * info["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + h * 2 * ffn + ffn * h
    return layers * per_layer + h * info["vocab_size"]


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------

def method_config(method: str, args: argparse.Namespace, model: dict[str, Any],
                  out_dir: Path) -> dict[str, Any]:
    from trainer.config import load_yaml

    source = {"lora": "lora.yaml", "lora_bs4": "lora.yaml", "ptuning_v2": "ptuning_v2.yaml",
              "sft_zero3": "sft.yaml"}[method]
    config = load_yaml((REPO / "configs" / source).read_text(encoding="utf-8"))
    config["data_config"]["test_file"] = None  # no generation over the test set at the end
    ta = config["training_args"]
    steps = args.sft_steps if method == "sft_zero3" else args.max_steps
    ta.update({"output_dir": str(out_dir), "max_steps": steps, "logging_steps": args.logging_steps,
               "eval_strategy": "no", "save_strategy": "steps", "save_steps": steps,
               "seed": 42})
    if args.dataloader_workers is not None:
        ta["dataloader_num_workers"] = args.dataloader_workers
    if method == "lora_bs4":
        ta["per_device_train_batch_size"] = 4
    if method == "ptuning_v2":
        peft = config["peft_config"]
        # upstream 2 / 256 are glm-4-9b's KV groups / 2 x head_dim; follow the model if shrunk
        peft["num_attention_heads"] = model["kv_heads"]
        peft["token_dim"] = model["kv_heads"] * model["head_dim"]
        if args.virtual_tokens:
            peft["num_virtual_tokens"] = args.virtual_tokens
    if method == "sft_zero3":
        ta["deepspeed"] = str(REPO / "configs" / "ds_zero_3.json")
        # the 3.7 B model's fp32 Adam states are ~44 GB: keep the end-of-run save to the weights
        ta["save_only_model"] = True
    return config


# ----------------------------------------------------------------------------------------------
# subprocess modes
# ----------------------------------------------------------------------------------------------

def worker(argv: list[str]) -> int:
    """``_worker RESULT -- <trainer.finetune args>``: run the trainer in this process, then
    write this rank's peak GPU memory to ``RESULT.rank<R>.json``."""
    result = Path(argv[0])
    trainer_argv = argv[2:] if argv[1:2] == ["--"] else argv[1:]
    import torch

    from trainer.finetune import main

    if os.environ.get("GLMFT_BENCH_DISABLE_CUDNN_SDP") == "1":
        # pytorch/pytorch#196678: cuDNN SDPA backward NaN with a mask on H100/H200 (torch 2.11+)
        torch.backends.cuda.enable_cudnn_sdp(False)
    t0 = time.time()
    rc = main(trainer_argv)
    rank = int(os.environ.get("RANK", "0"))
    record: dict[str, Any] = {"rank": rank, "rc": rc, "wall_s": round(time.time() - t0, 2)}
    if torch.cuda.is_available():
        record["device"] = torch.cuda.get_device_name()
        record["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        record["max_memory_reserved"] = torch.cuda.max_memory_reserved()
    Path(f"{result}.rank{rank}.json").write_text(json.dumps(record))
    return rc


def reload_check(argv: list[str]) -> int:
    """``_reload CHECKPOINT DATA_DIR RESULT``: load a saved full model in a new process and run
    one forward pass with labels on four training rows."""
    checkpoint, data_dir, result = Path(argv[0]), Path(argv[1]), Path(argv[2])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import LeftPadCollator
    from trainer.template import SpecialTokens, encode_train

    t0 = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    t_load = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    special = SpecialTokens.from_tokenizer(tokenizer)
    lines = (data_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    features = []
    for line in lines:
        ex = encode_train(tokenizer, special, json.loads(line)["messages"], combine=True,
                          max_length=1025)
        features.append({"input_ids": ex.input_ids, "labels": ex.labels})
    collated = LeftPadCollator(pad_id=special.endoftext)(features)
    batch = {k: v.to(device) for k, v in collated.items()}
    with torch.no_grad():
        loss = float(model(**batch).loss)
    record = {"ok": math.isfinite(loss), "loss": loss, "load_s": round(t_load, 2),
              "params": sum(p.numel() for p in model.parameters()),
              "class": type(model).__name__}
    result.write_text(json.dumps(record))
    print(json.dumps(record))
    return 0 if record["ok"] else 1


# ----------------------------------------------------------------------------------------------
# orchestration
# ----------------------------------------------------------------------------------------------

def run_process(cmd: list[str], log: Path, timeout: float,
                env: dict[str, str]) -> tuple[int, float]:
    """Run ``cmd`` in its own process group, tee-ing its output to ``log``; kill it at timeout."""
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        if proc.stdout is None:
            raise RuntimeError("no stdout pipe")
        deadline = time.monotonic() + timeout
        timed_out = False
        for line in proc.stdout:
            fh.write(line)
            if _interesting(line):
                sys.stdout.write("    | " + line)
                sys.stdout.flush()
            if time.monotonic() > deadline:
                timed_out = True
                break
        if timed_out or proc.poll() is None:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            fh.write(f"\n[train_bench] killed after {timeout:.0f} s\n")
            return 124, time.perf_counter() - t0
    return proc.returncode, time.perf_counter() - t0


def _interesting(line: str) -> bool:
    keys = ("Error", "error", "Traceback", "trainable params", "'loss'", "train_runtime",
            "killed", "out of memory", "Exception", "rank0]:", "ok\":")
    return any(k in line for k in keys) and "Warning" not in line


def summarize(events: list[dict[str, Any]], warmup_windows: int, world: int,
              flops_per_token: float, peak_tflops: float | None) -> dict[str, Any]:
    steps = [e for e in events if e.get("event") == "step"]
    started = next((e for e in events if e.get("event") == "started"), None)
    status = next((e for e in reversed(events) if e.get("event") == "status"), None)
    ckpt = next((e for e in reversed(events) if e.get("event") == "checkpoint"), None)
    out: dict[str, Any] = {"status": status.get("status") if status else None,
                           "status_detail": status if status and status.get("status") != "succeeded"
                           else None,
                           "logged_windows": len(steps)}
    if started:
        out["trainable_params"] = started.get("trainable_params")
        out["total_params"] = started.get("total_params")
    if ckpt:
        out["checkpoint"] = ckpt.get("path")
        out["checkpoint_bytes"] = ckpt.get("bytes")
    if not steps:
        return out
    losses = [s["loss"] for s in steps]
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    # HF Trainer drops NaN/inf step losses from the logged mean (logging_nan_inf_filter), so a
    # NaN run logs loss 0.0: a non-finite grad_norm is the reliable sign.
    bad = [s["step"] for s in steps
           if not (isinstance(s["loss"], (int, float)) and math.isfinite(s["loss"]))
           or (s.get("grad_norm") is not None and not math.isfinite(s["grad_norm"]))]
    out["loss_finite"] = not bad
    if bad:
        out["first_nonfinite_window_step"] = bad[0]
    steady = steps[warmup_windows:] if len(steps) > warmup_windows else steps[-1:]
    out["tokens_per_second"] = statistics.median(s["tokens_per_second"] for s in steady)
    out["tokens_per_second_per_gpu"] = out["tokens_per_second"] / world
    # step time from the event timestamps (logging windows after warm-up)
    step_times = []
    prev = steps[warmup_windows - 1] if 0 < warmup_windows < len(steps) else None
    for s in steady:
        if prev is not None and s["step"] > prev["step"]:
            step_times.append((s["time"] - prev["time"]) / (s["step"] - prev["step"]))
        prev = s
    if step_times:
        out["step_s"] = statistics.median(step_times)
    if peak_tflops:
        out["mfu"] = out["tokens_per_second_per_gpu"] * flops_per_token / (peak_tflops * 1e12)
    if started and status and status.get("status") == "succeeded":
        out["first_step_after_start_s"] = round(steps[0]["time"] - started["time"], 2)
    out["steps"] = [{k: _json_number(s.get(k)) for k in (
        "step", "loss", "tokens_per_second", "learning_rate", "grad_norm", "time")} for s in steps]
    return out


def _json_number(value: Any) -> Any:
    """NaN/inf as strings, so the results stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__,
                            "host": platform.node(), "cpu_count": os.cpu_count()}
    for name in ("peft", "accelerate", "deepspeed", "tokenizers"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:
            info[name] = f"unavailable ({type(exc).__name__})"
    if args.device == "cuda" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cudnn_sdpa_nan_check"] = cudnn_sdpa_check()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False,
            ).stdout.split("\n")[0].strip()
    else:
        info["device"] = "cpu"
        info["gpu_count"] = 0
    return info


def cudnn_sdpa_check() -> dict[str, Any]:
    """Non-finite ``grad_q`` counts of SDPA (default backends, bf16) on the shapes of
    pytorch/pytorch#196678 and on a GLM-like left-padded batch row (head_dim 128, first 20 query
    rows fully masked) at widths 192 (% 128 == 64) and 256; and the 192 case with cuDNN off."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    def grad_q_nonfinite(length: int, dim: int, mask: Any, q_shift: bool) -> int:
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (1, 1, length, dim)
        q = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.1
        k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.1
        v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        if q_shift:
            q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(dim)
        q.requires_grad_()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out.backward(torch.randn_like(out))
        grad = q.grad
        return -1 if grad is None else int((~torch.isfinite(grad)).sum())

    def left_pad_mask(length: int, pad: int) -> Any:
        i = torch.arange(length, device="cuda")
        return ((i[None, :] <= i[:, None]) & (i[None, :] >= pad))[None, None]

    try:
        tril = torch.ones(704, 704, dtype=torch.bool, device="cuda").tril()[None, None]
        result = {"issue_repro_704": grad_q_nonfinite(704, 64, tril, True),
                  "left_pad_192": grad_q_nonfinite(192, 128, left_pad_mask(192, 20), False),
                  "left_pad_256": grad_q_nonfinite(256, 128, left_pad_mask(256, 20), False)}
        torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            result["left_pad_192_cudnn_off"] = grad_q_nonfinite(192, 128, left_pad_mask(192, 20),
                                                                False)
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
        return result
    except Exception as exc:  # a diagnostic, never fatal
        return {"error": f"{type(exc).__name__}: {exc}"}


def peak_tflops_for(device: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device:
            return value
    return None


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def run_method(method: str, args: argparse.Namespace, work: Path, data_dir: Path,
               model: dict[str, Any], deadline: float, peak_tflops: float | None,
               avg_seq: float) -> dict[str, Any]:
    out_dir = work / "runs" / method
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    config = method_config(method, args, model, out_dir)
    config_path = work / f"{method}.yaml"
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=1))  # JSON is YAML
    result = out_dir / "peak"
    trainer_args = [str(data_dir), model["path"], str(config_path), "no",
                    "--output-dir", str(out_dir)]
    world = 1
    env = dict(os.environ)
    if args.no_cudnn_sdp:
        env["GLMFT_BENCH_DISABLE_CUDNN_SDP"] = "1"
    if method != "sft_zero3" and args.gpu_count > 1 and "CUDA_VISIBLE_DEVICES" not in env:
        # a plain `python -m trainer.finetune` on a multi-GPU host gets HF Trainer's
        # nn.DataParallel over every visible GPU (n_gpu x the batch): pin one GPU
        env["CUDA_VISIBLE_DEVICES"] = "0"
    if method == "sft_zero3":
        world = args.gpus
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", str(Path(__file__).resolve()), "_worker",
               str(result), "--", *trainer_args]
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", str(result), "--",
               *trainer_args]
    timeout = min(args.method_timeout, deadline - time.monotonic())
    record: dict[str, Any] = {"method": method, "world_size": world,
                              "command": " ".join(["python -m trainer.finetune", *trainer_args])
                              if world == 1 else " ".join(
                                  [f"torchrun --standalone --nproc_per_node={world}",
                                   "-m trainer.finetune", *trainer_args]),
                              "cudnn_sdp": not args.no_cudnn_sdp,
                              "config": config, "model": {k: model[k] for k in (
                                  "layers", "params")}}
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
            round(r.get("max_memory_allocated", 0) / 2**30, 2) for r in per_rank]
        record["peak_reserved_gib_per_rank"] = [
            round(r.get("max_memory_reserved", 0) / 2**30, 2) for r in per_rank]
        record["peak_allocated_gib"] = max(record["peak_allocated_gib_per_rank"])
    from trainer.events import read_events
    n = matmul_params(model)
    # LoRA / prefix: forward 2N + input-gradient backward 2N; full SFT adds the weight grads (2N).
    factor = 6 if method == "sft_zero3" else 4
    ctx = avg_seq / 2 + (config.get("peft_config") or {}).get("num_virtual_tokens", 0) \
        if method == "ptuning_v2" else avg_seq / 2
    attn = (factor // 2) * 2 * 2 * model["layers"] * ctx * model["heads"] * model["head_dim"]
    flops_per_token = factor * n + attn
    record.update(summarize(read_events(out_dir), args.warmup_windows, world,
                            flops_per_token, peak_tflops))
    record["flops_per_token"] = flops_per_token
    if rc != 0:
        record["log_tail"] = (work / f"{method}.log").read_text(encoding="utf-8",
                                                                errors="replace")[-4000:]
    if method == "sft_zero3" and record.get("checkpoint") and rc == 0:
        timeout = min(args.method_timeout, deadline - time.monotonic())
        reload_result = out_dir / "reload.json"
        print(f"   reload check of {record['checkpoint']} in a new process", flush=True)
        rc2, wall2 = run_process([sys.executable, str(Path(__file__).resolve()), "_reload",
                                  record["checkpoint"], str(data_dir), str(reload_result)],
                                 work / "reload.log", max(timeout, 30), env)
        record["reload"] = (json.loads(reload_result.read_text()) if reload_result.is_file()
                            else {"ok": False, "rc": rc2,
                                  "log_tail": (work / "reload.log").read_text()[-3000:]})
        record["reload"]["wall_s"] = round(wall2, 1)
    return record


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    head = ("| method | GPUs | layers | batch | step (s) | non-pad tokens/s | per GPU | MFU | "
            "peak alloc (GiB) | loss first -> last | status |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['method']} | | | | | | | | | | skipped: {r['skipped']} |")
            continue
        batch = r["config"]["training_args"]["per_device_train_batch_size"]
        status = r.get("status") or f"rc {r.get('rc')}"
        if r.get("first_nonfinite_window_step") is not None:
            status += f", NaN grads by step {r['first_nonfinite_window_step']}"
        if r.get("cudnn_sdp") is False:
            status += ", cuDNN SDPA off"
        if "reload" in r:
            status += ", reload " + ("ok" if r["reload"].get("ok") else "FAILED")
            if r["reload"].get("loss") is not None:
                status += f" (loss {r['reload']['loss']:.2f})"
        loss = (f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-")
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['method']} | {r['world_size']} | {r['model']['layers']} | {batch} | "
            f"{fmt(r.get('step_s'), '.3f')} | {fmt(r.get('tokens_per_second'), ',.0f')} | "
            f"{fmt(r.get('tokens_per_second_per_gpu'), ',.0f')} | {mfu} | "
            f"{fmt(r.get('peak_allocated_gib'))} | {loss} | {status} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="lora,lora_bs4,ptuning_v2",
                   help="comma-separated: lora, lora_bs4, ptuning_v2, sft_zero3")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--work", type=Path,
                   default=Path(tempfile.gettempdir()) / "glmft-train-bench",
                   help="scratch dir for models, data, runs (the 40-layer model is 18.8 GB)")
    p.add_argument("--layers", type=int, default=40, help="layers of the LoRA/P-Tuning model")
    p.add_argument("--sft-layers", type=int, default=12, help="layers of the ZeRO-3 model")
    p.add_argument("--hidden-size", type=int, help="override GlmConfig's 4096 (CPU smoke tests)")
    p.add_argument("--heads", type=int, help="override GlmConfig's 32 attention heads")
    p.add_argument("--intermediate-size", type=int, help="override GlmConfig's 13696")
    p.add_argument("--vocab-size", type=int,
                   help="override GlmConfig's 151552 (>= 2014, the tiny tokenizer's size)")
    p.add_argument("--virtual-tokens", type=int, help="override P-Tuning v2's 512")
    p.add_argument("--gpus", type=int, default=2, help="ranks for sft_zero3")
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--sft-steps", type=int, default=40)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--warmup-windows", type=int, default=2,
                   help="logging windows left out of the steady-state medians")
    p.add_argument("--dataloader-workers", type=int,
                   help="override the configs' dataloader_num_workers (upstream 16)")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--dev-rows", type=int, default=16)
    p.add_argument("--method-timeout", type=float, default=240.0, help="seconds per method")
    p.add_argument("--deadline", type=float, default=3000.0,
                   help="seconds for the whole run; methods that would start later are skipped")
    p.add_argument("--no-cudnn-sdp", action="store_true",
                   help="disable the cuDNN SDPA backend in the trainer processes "
                        "(pytorch/pytorch#196678: NaN grad_q with a padding mask)")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument("--keep", action="store_true", help="keep the work dir's runs (not the model)")
    p.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                   help="also write the JSON (and logs) here (default $OUT)")
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
    unknown = set(methods) - {"lora", "lora_bs4", "ptuning_v2", "sft_zero3"}
    if unknown:
        raise SystemExit(f"unknown methods: {sorted(unknown)}")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no GPU is visible (use --device cpu)")
    info = device_info(args)
    args.gpu_count = info["gpu_count"]
    print(json.dumps(info), flush=True)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    from trainer.tiny import build_tokenizer
    tokenizer = build_tokenizer()
    data_dir = work / "data"
    data = write_data(data_dir, tokenizer, args.train_rows, args.dev_rows)
    print("data:", json.dumps(data), flush=True)

    models: dict[int, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    peak = peak_tflops_for(info["device"]) if args.device == "cuda" else None
    for method in methods:
        layers = args.sft_layers if method == "sft_zero3" else args.layers
        if layers not in models:
            print(f"\n== building a {layers}-layer GLM-4-shaped model", flush=True)
            models[layers] = build_model(args, layers, work / f"model-L{layers}")
            print("model:", json.dumps(models[layers]), flush=True)
        if method == "sft_zero3" and args.device == "cuda" and info["gpu_count"] < args.gpus:
            results.append({"method": method, "skipped": f"needs {args.gpus} GPUs, "
                            f"{info['gpu_count']} visible"})
            continue
        record = run_method(method, args, work, data_dir, models[layers], deadline, peak,
                            data["sequence_tokens_mean"])
        results.append(record)
        print(table([record]), flush=True)
        if not args.keep and record.get("checkpoint"):
            shutil.rmtree(Path(record["checkpoint"]), ignore_errors=True)

    report = {"benchmark": "train_bench", "date": dt.datetime.now(dt.UTC).isoformat(
        timespec="seconds"), "command": " ".join([Path(sys.executable).name,
                                                   "bench/train_bench.py", *argv]),
              "environment": info, "data": data, "models": list(models.values()),
              "anchors": ANCHORS, "results": results,
              "wall_s": round(time.monotonic() - t_start, 1)}
    text = json.dumps(report, ensure_ascii=False, indent=1, default=str)
    name = f"train_bench_{slug(info['device'])}{'_' + slug(args.tag) if args.tag else ''}.json"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / name).write_text(text, encoding="utf-8")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / name).write_text(text, encoding="utf-8")
    print("\n" + table(results))
    print(f"\nwrote {args.results_dir / name}" + (f" and {args.out / name}" if args.out else ""))
    ok = all(r.get("skipped") or (r.get("rc") == 0 and r.get("loss_finite")
                                  and r.get("reload", {"ok": True}).get("ok")) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
