"""Vision LoRA on a GLM-4.1V-9B-shaped model: tokens/s and peak GPU memory against upstream's
75 GB (GLM-4V-9B LoRA, vision tower included, README of the fine-tune demo).

The model is transformers' native ``Glm4vForConditionalGeneration`` at GLM-4.1V-9B's shape
(40-layer GLM-4 language model, 24-block vision tower), random bf16 weights built in memory: no
download, nothing to load. LoRA is attached by the trainer's own ``attach_method`` with
``configs/lora.yaml``'s adapter (r 8, alpha 32, q/k/v), on the language model only
(``freezeV: true``) or, with ``--tower-lora``, on the vision tower's attention (``qkv``) too, as
upstream's ``query_key_value`` target did; batches come from the
trainer's ``VisionCollator``. Each step is one conversation per row: an image of
``--image-size`` pixels square (1120: 1600 image tokens, GLM-4V-9B's fixed count), a question
and an answer of random tokens; the loss covers the answer. Steps after ``--warmup`` are timed.

    python bench/vision_bench.py                  # on the GPU (bf16), 20 steps
    python bench/vision_bench.py --tiny           # CPU smoke test (tiny model, seconds)

Prints a table and writes ``bench/results/vision_bench_<device>.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from trainer.config import load_config  # noqa: E402
from trainer.modeling import attach_method  # noqa: E402
from trainer.vision_data import VisionCollator  # noqa: E402

UPSTREAM_GB = 75.0  # GLM-4V-9B LoRA on an A100-80G, upstream fine-tune demo README
PATCH, MERGE, TEMPORAL = 14, 2, 2


def glm41v_config() -> Any:
    """GLM-4.1V-9B's shape (its config.json's sizes; token ids are the defaults)."""
    from transformers import Glm4vConfig

    return Glm4vConfig(
        text_config={
            "vocab_size": 151552,
            "hidden_size": 4096,
            "intermediate_size": 13696,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 2,
            "max_position_embeddings": 65536,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [8, 12, 12],
            },
            "pad_token_id": 151329,
            "eos_token_id": [151329, 151336, 151338],
        },
        vision_config={
            "depth": 24,
            "hidden_size": 1536,
            "num_heads": 12,
            "intermediate_size": 13696,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "image_size": 336,
            "out_hidden_size": 4096,
            "rms_norm_eps": 1e-5,
        },
        tie_word_embeddings=False,
    )


def tiny_config() -> Any:
    from trainer.tiny_vision import build_vision_config, build_vision_tokenizer

    return build_vision_config(build_vision_tokenizer(), hidden_size=64, layers=2)


def build_model(config: Any, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Glm4vForConditionalGeneration

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = Glm4vForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.text_config.use_cache = False
    return model.train()


def synthetic_row(config: Any, image_size: int, question: int, answer: int) -> dict[str, Any]:
    """One conversation's token ids, labels and image tensors (random values, real shapes)."""
    side = image_size // (PATCH * MERGE) * MERGE  # patches per side, a multiple of the merge
    grid = torch.tensor([[1, side, side]])
    image_tokens = side * side // (MERGE * MERGE)
    vocab = 151329 if config.text_config.vocab_size > 100_000 else 1000
    text = torch.randint(0, vocab, (question + answer,)).tolist()
    start, end = config.image_start_token_id, config.image_end_token_id
    prompt = [start, *[config.image_token_id] * image_tokens, end, *text[:question]]
    ids = [*prompt, *text[question:]]
    labels = [-100] * len(prompt) + text[question:]
    pixels = torch.randn(side * side, 3 * TEMPORAL * PATCH * PATCH)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels, "image_grid_thw": grid}


def run(args: argparse.Namespace) -> dict[str, Any]:
    on_gpu = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    config = tiny_config() if args.tiny else glm41v_config()
    built = time.perf_counter()
    model = build_model(config, device, dtype)
    build_s = time.perf_counter() - built
    finetuning = load_config(REPO / "configs" / "lora.yaml")
    if args.tower_lora:  # as upstream's query_key_value, which GLM-4V's EVA-CLIP also has
        peft = dict(finetuning.peft_config or {})
        peft["target_modules"] = [*peft["target_modules"], "qkv"]
        finetuning = finetuning.model_copy(update={"freezeV": False, "peft_config": peft})
    model = attach_method(model, finetuning, gradient_checkpointing=args.gradient_checkpointing)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    collate = VisionCollator(
        pad_id=config.text_config.pad_token_id, image_token=config.image_token_id
    )
    takes_types = (
        "mm_token_type_ids" in inspect.signature(model.get_base_model().forward).parameters
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    timed_tokens, timed_s, losses = 0, 0.0, []
    for step in range(args.warmup + args.steps):
        rows = [
            synthetic_row(config, args.image_size, args.question_tokens, args.answer_tokens)
            for _ in range(args.batch)
        ]
        batch = {k: v.to(device) for k, v in collate(rows).items()}
        if not takes_types:  # transformers before mm_token_type_ids found images by their id
            batch.pop("mm_token_type_ids")
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        losses.append(loss.item())
        if step >= args.warmup:
            timed_s += time.perf_counter() - started
            timed_tokens += int(batch["attention_mask"].sum())
    peak = torch.cuda.max_memory_allocated() / 1e9 if on_gpu else None
    reserved = torch.cuda.max_memory_reserved() / 1e9 if on_gpu else None
    return {
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "model": "tiny GLM-4V (CPU smoke test)" if args.tiny else "GLM-4.1V-9B shape, random bf16",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "peft": __import__("peft").__version__,
        "lora_on_vision_tower": args.tower_lora,
        "gradient_checkpointing": args.gradient_checkpointing,
        "batch": args.batch,
        "image_size": args.image_size,
        "tokens_per_row": len(rows[0]["input_ids"]),
        "image_tokens_per_row": int(rows[0]["image_grid_thw"].prod()) // (MERGE * MERGE),
        "trainable_params": trainable,
        "total_params": total,
        "build_s": round(build_s, 2),
        "steps_timed": args.steps,
        "tokens_per_s": round(timed_tokens / timed_s, 1) if timed_s else None,
        "s_per_step": round(timed_s / args.steps, 4) if args.steps else None,
        "peak_allocated_gb": round(peak, 2) if peak is not None else None,
        "peak_reserved_gb": round(reserved, 2) if reserved is not None else None,
        "upstream_gb": UPSTREAM_GB,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("device", result["device"]),
        ("model", result["model"]),
        ("LoRA on vision tower", result["lora_on_vision_tower"]),
        ("gradient checkpointing", result["gradient_checkpointing"]),
        ("batch x tokens (image)", f"{result['batch']} x {result['tokens_per_row']} "
         f"({result['image_tokens_per_row']})"),
        ("trainable / total params",
         f"{result['trainable_params']:,} / {result['total_params']:,}"),
        ("tokens/s", result["tokens_per_s"]),
        ("s/step", result["s_per_step"]),
        ("peak GPU memory (allocated / reserved)",
         f"{result['peak_allocated_gb']} / {result['peak_reserved_gb']} GB"),
        ("upstream GLM-4V-9B LoRA", f"{result['upstream_gb']} GB"),
        ("loss first -> last", f"{result['first_loss']} -> {result['last_loss']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (20; tiny: 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; tiny: 1)")
    parser.add_argument("--batch", type=int, default=1, help="rows per step (upstream: 1)")
    parser.add_argument("--image-size", type=int, default=None, help="pixels (1120; tiny: 56)")
    parser.add_argument("--question-tokens", type=int, default=64)
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--tower-lora", action="store_true", help="LoRA on the vision tower too")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/...)")
    args = parser.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.image_size = args.image_size or (56 if args.tiny else 1120)
    if args.tiny:
        args.question_tokens, args.answer_tokens = (
            min(args.question_tokens, 16),
            min(args.answer_tokens, 16),
        )
    result = run(args)
    print_table(result)
    name = "cpu-tiny" if args.tiny else result["device"].lower().replace(" ", "-")
    out = args.out or REPO / "bench" / "results" / f"vision_bench_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
