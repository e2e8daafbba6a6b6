"""The training bench's measurements and report: steady-state step statistics from the events,
the device and library versions, the cuDNN SDPA NaN check, and the markdown table."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import subprocess
from typing import Any

# Dense bf16 peak, TFLOP/s, for model FLOP utilisation.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def summarize(
    events: list[dict[str, Any]],
    warmup_windows: int,
    world: int,
    flops_per_token: float,
    peak_tflops: float | None,
) -> dict[str, Any]:
    steps = [e for e in events if e.get("event") == "step"]
    started = next((e for e in events if e.get("event") == "started"), None)
    status = next((e for e in reversed(events) if e.get("event") == "status"), None)
    ckpt = next((e for e in reversed(events) if e.get("event") == "checkpoint"), None)
    out: dict[str, Any] = {
        "status": status.get("status") if status else None,
        "status_detail": status if status and status.get("status") != "succeeded" else None,
        "logged_windows": len(steps),
    }
    if started:
        out["trainable_params"] = started.get("trainable_params")
        out["total_params"] = started.get("total_params")
        out["memory_plan"] = started.get("memory")
    if ckpt:
        out["checkpoint"] = ckpt.get("path")
        out["checkpoint_bytes"] = ckpt.get("bytes")
    if not steps:
        return out
    losses = [s["loss"] for s in steps]
    out["loss_first"], out["loss_last"] = losses[0], losses[-1]
    # HF Trainer drops NaN/inf step losses from the logged mean (logging_nan_inf_filter), so a
    # NaN run logs loss 0.0: a non-finite grad_norm is the reliable sign.
    bad = [
        s["step"]
        for s in steps
        if not (isinstance(s["loss"], (int, float)) and math.isfinite(s["loss"]))
        or (s.get("grad_norm") is not None and not math.isfinite(s["grad_norm"]))
    ]
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
    out["steps"] = [
        {
            k: _json_number(s.get(k))
            for k in ("step", "loss", "tokens_per_second", "learning_rate", "grad_norm", "time")
        }
        for s in steps
    ]
    return out


def _json_number(value: Any) -> Any:
    """NaN/inf as strings, so the results stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }
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
        info["packed_attention_check"] = packed_attention_check()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            info["driver"] = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                    check=False,
                )
                .stdout.split("\n")[0]
                .strip()
            )
    else:
        info["device"] = "cpu"
        info["gpu_count"] = 0
    return info


def packed_attention_check() -> dict[str, Any]:
    """trainer.attention's varlen path against causal SDPA run on each conversation alone
    (GLM-4 shapes: 32 query heads, 2 KV heads, head_dim 128; three conversations in a row), and
    again with a 512-token P-Tuning v2 prefix ahead of each conversation's keys: the largest
    absolute difference of outputs and of query gradients, in bf16."""
    from trainer.attention import packed_attention_available

    if not packed_attention_available():
        return {"available": False}
    try:
        plain, prefixed = _packed_attention_diffs(0), _packed_attention_diffs(512)
    except Exception as exc:  # a diagnostic, never fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"available": True, **plain, **{f"prefix_{k}": v for k, v in prefixed.items()}}


def _packed_attention_diffs(prefix: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F  # noqa: N812

    from trainer.attention import packed_attention

    lengths = [300, 1000, 77]
    gen = torch.Generator(device="cuda").manual_seed(0)
    total = sum(lengths)

    def rand(heads: int, tokens: int) -> Any:
        return torch.randn(
            (1, heads, tokens, 128), device="cuda", dtype=torch.bfloat16, generator=gen
        ).requires_grad_()

    q, k, v = rand(32, total), rand(2, prefix + total), rand(2, prefix + total)
    bounds = torch.tensor([0, 300, 1300, 1377], device="cuda", dtype=torch.int32)
    out, _ = packed_attention(
        torch.nn.Module(),
        q,
        k,
        v,
        None,
        scaling=128**-0.5,
        cu_seq_lens_q=bounds,
        max_length_q=max(lengths),
    )
    grad = torch.randn_like(out)
    (gq,) = torch.autograd.grad(out, q, grad)
    refs, ref_grads, start = [], [], 0
    for n in lengths:
        piece = slice(start, start + n)
        keys = slice(prefix + start, prefix + start + n)
        qs = q[:, :, piece].detach().requires_grad_()
        ks = torch.cat([k[:, :, :prefix], k[:, :, keys]], 2).repeat_interleave(16, dim=1)
        vs = torch.cat([v[:, :, :prefix], v[:, :, keys]], 2).repeat_interleave(16, dim=1)
        causal = torch.ones(n, prefix + n, dtype=torch.bool, device="cuda").tril(prefix)
        ref = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=causal).transpose(1, 2)
        (rq,) = torch.autograd.grad(ref, qs, grad[:, piece])
        refs.append(ref)
        ref_grads.append(rq)
        start += n
    return {
        "max_abs_diff_out": float((out - torch.cat(refs, 1)).detach().abs().max()),
        "max_abs_diff_grad_q": float((gq - torch.cat(ref_grads, 2)).abs().max()),
    }


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
        result = {
            "issue_repro_704": grad_q_nonfinite(704, 64, tril, True),
            "left_pad_192": grad_q_nonfinite(192, 128, left_pad_mask(192, 20), False),
            "left_pad_256": grad_q_nonfinite(256, 128, left_pad_mask(256, 20), False),
        }
        torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            result["left_pad_192_cudnn_off"] = grad_q_nonfinite(
                192, 128, left_pad_mask(192, 20), False
            )
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


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and spec:
        return format(v, spec)
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| method | data | GPUs | layers | batch | checkpointing | step (s) | non-pad tokens/s | "
        "per GPU | MFU | peak alloc (GiB) | planned (GiB) | first step (s) | loss first -> last "
        "| status |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in results:
        if r.get("skipped"):
            lines.append(f"| {r['method']} |" + " |" * 13 + f" skipped: {r['skipped']} |")
            continue
        ta = r["config"]["training_args"]
        batch = ta["per_device_train_batch_size"]
        if ta.get("gradient_accumulation_steps", 1) > 1:
            batch = f"{batch} x {ta['gradient_accumulation_steps']}"
        status = r.get("status") or f"rc {r.get('rc')}"
        if r.get("first_nonfinite_window_step") is not None:
            status += f", NaN grads by step {r['first_nonfinite_window_step']}"
        if "reload" in r:
            status += ", reload " + ("ok" if r["reload"].get("ok") else "FAILED")
            if r["reload"].get("loss") is not None:
                status += f" (loss {r['reload']['loss']:.2f})"
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if "loss_first" in r else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        plan = r.get("memory_plan") or {}
        checkpointing = {True: "on", False: "off", None: "-"}[r.get("gradient_checkpointing")]
        lines.append(
            f"| {r['method']} | {r.get('data', '-')} | {r['world_size']} | "
            f"{r['model']['layers']} | {batch} | {checkpointing} | "
            f"{fmt(r.get('step_s'), '.3f')} | {fmt(r.get('tokens_per_second'), ',.0f')} | "
            f"{fmt(r.get('tokens_per_second_per_gpu'), ',.0f')} | {mfu} | "
            f"{fmt(r.get('peak_allocated_gib'))} | {fmt(plan.get('estimate_gib'))} | "
            f"{fmt(r.get('first_step_after_start_s'))} | {loss} | {status} |"
        )
    return "\n".join(lines)


def loss_parity(results: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """Step-by-step logged losses of two runs that saw the same batches (same seed and batch
    size): the largest relative difference."""
    runs = {r["method"]: r for r in results if r.get("steps")}
    if a not in runs or b not in runs:
        return None
    la = {s["step"]: s["loss"] for s in runs[a]["steps"]}
    lb = {s["step"]: s["loss"] for s in runs[b]["steps"]}
    common = sorted(set(la) & set(lb))
    pairs = [
        (la[k], lb[k]) for k in common if isinstance(la[k], float) and isinstance(lb[k], float)
    ]
    if not pairs:
        return None
    rel = [abs(x - y) / max(abs(y), 1e-9) for x, y in pairs]
    return {
        "runs": [a, b],
        "logged_steps": common,
        "max_relative_difference": max(rel),
        "last": {a: pairs[-1][0], b: pairs[-1][1]},
    }


GIB_PER_GB = 1e9 / 2**30


def target_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-speed targets, each against what this run measured (missing runs left out)."""
    runs = {r["method"]: r for r in results if r.get("status") == "succeeded"}

    def metric(method: str, key: str) -> float | None:
        value = runs.get(method, {}).get(key)
        return float(value) if value is not None else None

    def tps(method: str) -> float | None:
        return metric(method, "tokens_per_second_per_gpu")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def percent(value: float | None) -> float | None:
        return None if value is None else 100 * value

    def fastest(*methods: str) -> str:
        """The first of ``methods`` this run measured (compiled before eager)."""
        return next((m for m in methods if m in runs), methods[-1])

    lora, chat = fastest("lora_compile", "lora_fast"), fastest("chat_compile", "chat_fast")
    ptuning = fastest("ptuning_packed", "ptuning_compile", "ptuning_fast")
    # (target, measured, goal, at least (True) or at most (False), unit)
    rows: list[tuple[str, float | None, float, bool, str]] = [
        (f"LoRA, AdvertiseGen-like ({lora})", tps(lora), 10_000, True, "tokens/s"),
        (
            f"LoRA fast setting memory (40 GB, {lora})",
            metric(lora, "peak_allocated_gib"),
            round(40 * GIB_PER_GB, 2),
            False,
            "GiB",
        ),
        (
            "LoRA speed-up over the upstream pipeline",
            ratio(tps(lora), tps("lora")),
            25,
            True,
            "x",
        ),
        (f"LoRA, packed 2-4k chat ({chat})", tps(chat), 12_000, True, "tokens/s"),
        ("memory-lean LoRA speed", tps("lora_lean"), 5_000, True, "tokens/s"),
        (
            "memory-lean LoRA peak (20 GB)",
            metric("lora_lean", "peak_allocated_gib"),
            round(20 * GIB_PER_GB, 2),
            False,
            "GiB",
        ),
        (
            f"P-Tuning v2 / LoRA tokens/s ({ptuning} / {lora})",
            ratio(tps(ptuning), tps(lora)),
            0.9,
            True,
            "ratio",
        ),
        (
            "P-Tuning v2 peak at the demo settings (22 GB)",
            metric("ptuning_lean", "peak_allocated_gib"),
            round(22 * GIB_PER_GB, 2),
            False,
            "GiB",
        ),
    ]
    rows += [
        (f"{m} MFU (target is for 4 GPUs)", percent(metric(m, "mfu")), 40, True, "%")
        for m in (fastest("sft_zero3_compile", "sft_zero3_fast"), "sft_offload_fast")
    ]
    return [
        {
            "target": name,
            "measured": round(value, 3),
            "goal": goal,
            "met": value >= goal if at_least else value <= goal,
            "unit": unit,
        }
        for name, value, goal, at_least, unit in rows
        if value is not None
    ]


def checks_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for c in checks:
        lines.append(
            f"| {c['target']} | {c['measured']} {c['unit']} | {c['goal']} {c['unit']} | "
            f"{'yes' if c['met'] else 'no'} |"
        )
    return "\n".join(lines)
