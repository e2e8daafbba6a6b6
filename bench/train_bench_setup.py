"""The training bench's inputs: the synthetic AdvertiseGen-like dataset, the random
GLM-4-shaped model, and the per-method trainer configs derived from the upstream ones."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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
_CHARS = (
    "这款裙子采用宽松的版型设计穿着舒适自在性感的线条图案时尚大方面料柔软亲肤搭配百搭单品凸显"
    "气质简约清新复古优雅通勤休闲修身显瘦腰身领口袖子细节精致"
)


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
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    stats = {
        "rows": n,
        "prompt_tokens_mean": statistics.mean(prompt_lens),
        "prompt_tokens_min": min(prompt_lens),
        "prompt_tokens_max": max(prompt_lens),
        "answer_tokens_mean": statistics.mean(answer_lens),
        "answer_tokens_stdev": statistics.pstdev(answer_lens),
    }
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
    lengths = [
        len(
            encode_train(tokenizer, special, r["messages"], combine=True, max_length=1025).input_ids
        )
        for r in train[:200]
    ]
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
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
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
    info = {
        "layers": layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "params": params,
        "bytes_on_disk": size,
        "build_s": round(t_build, 2),
        "save_s": round(t_save, 2),
        "path": str(out_dir),
    }
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


def method_config(
    method: str, args: argparse.Namespace, model: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    from trainer.config import load_yaml

    source = {
        "lora": "lora.yaml",
        "lora_bs4": "lora.yaml",
        "lora_fast": "lora.yaml",
        "ptuning_v2": "ptuning_v2.yaml",
        "sft_zero3": "sft.yaml",
    }[method]
    config = load_yaml((REPO / "configs" / source).read_text(encoding="utf-8"))
    config["data_config"]["test_file"] = None  # no generation over the test set at the end
    ta = config["training_args"]
    steps = args.sft_steps if method == "sft_zero3" else args.max_steps
    ta.update(
        {
            "output_dir": str(out_dir),
            "max_steps": steps,
            "logging_steps": args.logging_steps,
            "eval_strategy": "no",
            "save_strategy": "steps",
            "save_steps": steps,
            "seed": 42,
        }
    )
    if args.dataloader_workers is not None:
        ta["dataloader_num_workers"] = args.dataloader_workers
    if method == "lora_bs4":
        ta["per_device_train_batch_size"] = 4
    if method == "lora_fast":  # glmft's switches: no padding, no full logits, bigger batches
        ta["per_device_train_batch_size"] = args.fast_batch
        config["packing"] = True
        config["chunked_loss"] = True
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
