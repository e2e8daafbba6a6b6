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


def make_chat_rows(
    tokenizer: Any, n: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Long multi-turn chats of 2,048-4,096 tokens under ``tokenizer``: a system prompt, then
    user/assistant turns of 60-600 tokens until the conversation's target length."""
    rng = random.Random(seed)
    rows, totals, turns = [], [], []
    ratio = 1.2
    for _ in range(n):
        target = rng.randint(2048, 4096)
        messages: list[dict[str, str]] = [{"role": "system", "content": "你是一个服装文案助手。"}]
        total = _ntok(tokenizer, messages[0]["content"]) + 4
        while total < target - 64:
            role = "user" if messages[-1]["role"] != "user" else "assistant"
            want = min(rng.randint(60, 600), target - total)
            chars = max(8, round(want / ratio))
            text = "".join(rng.choice(_CHARS) for _ in range(chars)) + "。"
            got = _ntok(tokenizer, text)
            ratio = 0.9 * ratio + 0.1 * (got / (chars + 1))
            messages.append({"role": role, "content": text})
            total += got + 2  # the role token and its newline
        if messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": "好的。"})
        rows.append({"messages": messages})
        totals.append(total)
        turns.append(len(messages) - 1)
    stats = {
        "rows": n,
        "conversation_tokens_mean": statistics.mean(totals),
        "conversation_tokens_min": min(totals),
        "conversation_tokens_max": max(totals),
        "turns_mean": statistics.mean(turns),
    }
    return rows, stats


DATASETS = {"adgen": make_rows, "chat": make_chat_rows}
# Lengths the chat configs train with: whole 2-4k conversations, no truncation.
CHAT_LENGTHS = {"max_input_length": 4096, "max_output_length": 1024}


def write_data(
    data_dir: Path, tokenizer: Any, kind: str, train_rows: int, dev_rows: int
) -> dict[str, Any]:
    """``data_dir/{train,dev}.jsonl`` of the ``kind`` dataset, and its token statistics."""
    data_dir.mkdir(parents=True, exist_ok=True)
    make = DATASETS[kind]
    train, stats = make(tokenizer, train_rows, 1)
    dev, _ = make(tokenizer, dev_rows, 2)
    for name, rows in (("train.jsonl", train), ("dev.jsonl", dev)):
        with (data_dir / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    # Sequence lengths as the trainer sees them (chat template + end-of-turn token).
    from trainer.template import SpecialTokens, encode_train

    special = SpecialTokens.from_tokenizer(tokenizer)
    max_length = 8192 if kind == "chat" else 1025
    examples = [
        encode_train(tokenizer, special, r["messages"], combine=True, max_length=max_length)
        for r in train[:200]
    ]
    lengths = [len(e.input_ids) for e in examples]
    stats["kind"] = kind
    stats["sequence_tokens_mean"] = statistics.mean(lengths)
    stats["sequence_tokens_max"] = max(lengths)
    stats["target_tokens_mean"] = statistics.mean(
        sum(1 for label in e.labels if label >= 0) for e in examples
    )
    stats["path"] = str(data_dir)
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


# What each method changes in the upstream config it starts from. ``glmft`` keys are glmft's own
# switches; ``batch`` is per_device_train_batch_size (None: the upstream value).
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"source": "lora.yaml", "data": "adgen", "what": "upstream lora.yaml, batch 1"},
    "lora_bs16": {
        "source": "lora.yaml",
        "data": "adgen",
        "batch": 16,
        "what": "upstream collator (left padding), batch 16: lora_fast's loss reference",
    },
    "lora_fast": {
        "source": "lora.yaml",
        "data": "adgen",
        "batch": "fast",
        "glmft": {"packing": True, "chunked_loss": True},
        "what": "packing + chunked loss, no checkpointing",
    },
    "lora_compile": {
        "source": "lora.yaml",
        "data": "adgen",
        "batch": "fast",
        "glmft": {"packing": True, "chunked_loss": True, "compile": True},
        "what": "lora_fast + compiled decoder layers",
    },
    "lora_lean": {
        "source": "lora.yaml",
        "data": "adgen",
        "batch": "lean",
        "glmft": {"packing": True, "chunked_loss": True, "memory_budget_gib": "lean"},
        "what": "packing + chunked loss, checkpointing chosen by memory_budget_gib",
    },
    "chat_lora": {
        "source": "lora.yaml",
        "data": "chat",
        "what": "upstream lora.yaml, batch 1, lengths raised to 4096+1024",
    },
    "chat_fast": {
        "source": "lora.yaml",
        "data": "chat",
        "batch": 2,
        "glmft": {"packing": True, "chunked_loss": True},
        "what": "2 chats packed per row + chunked loss, no checkpointing",
    },
    "chat_compile": {
        "source": "lora.yaml",
        "data": "chat",
        "batch": 2,
        "glmft": {"packing": True, "chunked_loss": True, "compile": True},
        "what": "chat_fast + compiled decoder layers",
    },
    "ptuning_v2": {
        "source": "ptuning_v2.yaml",
        "data": "adgen",
        "what": "upstream ptuning_v2.yaml, batch 4",
    },
    "ptuning_fast": {
        "source": "ptuning_v2.yaml",
        "data": "adgen",
        "batch": "fast",
        "glmft": {"chunked_loss": True},
        "training_args": {"train_sampling_strategy": "group_by_length"},
        "what": "batches of similar lengths (little padding) + chunked loss",
    },
    "ptuning_lean": {
        "source": "ptuning_v2.yaml",
        "data": "adgen",
        "glmft": {"chunked_loss": True, "memory_budget_gib": "ptuning"},
        "what": "upstream ptuning_v2.yaml (batch 4) + chunked loss + memory_budget_gib (22 GB)",
    },
    "ptuning_compile": {
        "source": "ptuning_v2.yaml",
        "data": "adgen",
        "batch": "fast",
        "glmft": {"chunked_loss": True, "compile": True},
        "training_args": {"train_sampling_strategy": "group_by_length"},
        "what": "ptuning_fast + compiled decoder layers",
    },
    "ptuning_packed": {
        "source": "ptuning_v2.yaml",
        "data": "adgen",
        "batch": "fast",
        "glmft": {"packing": True, "chunked_loss": True, "compile": True},
        "what": "packed (each conversation attends to the prefix) + chunked loss + compiled layers",
    },
    "sft_zero3": {
        "source": "sft.yaml",
        "data": "adgen",
        "zero3": "ds_zero_3.json",
        "what": "upstream sft.yaml + ds_zero_3.json, batch 1",
    },
    "sft_zero3_fast": {
        "source": "sft.yaml",
        "data": "adgen",
        "zero3": "ds_zero_3.json",
        "batch": "sft",
        "glmft": {"packing": True, "chunked_loss": True, "memory_budget_gib": "sft"},
        "what": "packing + chunked loss under ZeRO-3, ~30k tokens a step, checkpointing by budget",
    },
    "sft_zero3_compile": {
        "source": "sft.yaml",
        "data": "adgen",
        "zero3": "ds_zero_3.json",
        "batch": "sft",
        "glmft": {
            "packing": True,
            "chunked_loss": True,
            "memory_budget_gib": "sft",
            "compile": True,
        },
        "what": "sft_zero3_fast + compiled RMSNorm, SwiGLU and RoPE (ZeRO-3's compile)",
    },
    "sft_offload": {
        "source": "sft.yaml",
        "data": "adgen",
        "zero3": "ds_zero_3_offload.json",
        "what": "upstream sft.yaml, ZeRO-3 with the optimizer offloaded to CPU, batch 1",
    },
    "sft_offload_fast": {
        "source": "sft.yaml",
        "data": "adgen",
        "zero3": "ds_zero_3_offload.json",
        "batch": "sft",
        "glmft": {"packing": True, "chunked_loss": True, "memory_budget_gib": "sft"},
        "what": "sft_zero3_fast's rows, one per CPU Adam step",
    },
}
SFT_METHODS = {name for name, m in METHODS.items() if "zero3" in m}


def method_config(
    method: str, args: argparse.Namespace, model: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    from trainer.config import load_yaml

    spec = METHODS[method]
    config = load_yaml((REPO / "configs" / spec["source"]).read_text(encoding="utf-8"))
    config["data_config"]["test_file"] = None  # no generation over the test set at the end
    if spec["data"] == "chat":
        config.update(CHAT_LENGTHS)
    ta = config["training_args"]
    steps = args.max_steps
    if method in SFT_METHODS:
        steps = args.offload_steps if "offload" in method else args.sft_steps
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
    batch = spec.get("batch")
    if batch is not None:
        named = {"fast": args.fast_batch, "lean": args.lean_batch, "sft": args.sft_batch}
        ta["per_device_train_batch_size"] = named.get(batch, batch)
    ta.update(spec.get("training_args", {}))
    for key, value in spec.get("glmft", {}).items():
        if value == "lean":
            value = args.lean_budget_gib
        elif value == "sft":
            value = args.sft_budget_gib
        elif value == "ptuning":
            value = args.ptuning_budget_gib
        config[key] = value
    if (config.get("peft_config") or {}).get("peft_type") == "PREFIX_TUNING":
        peft = config["peft_config"]
        # upstream 2 / 256 are glm-4-9b's KV groups / 2 x head_dim; follow the model if shrunk
        peft["num_attention_heads"] = model["kv_heads"]
        peft["token_dim"] = model["kv_heads"] * model["head_dim"]
        if args.virtual_tokens:
            peft["num_virtual_tokens"] = args.virtual_tokens
    if "zero3" in spec:
        ta["deepspeed"] = str(REPO / "configs" / spec["zero3"])
        # the fp32 Adam states would add 12 bytes a parameter: keep the save to the weights
        ta["save_only_model"] = True
        if "offload" in method:  # ~7 s a step: log often enough for a steady-state median
            ta["logging_steps"] = 2
        if method == "sft_offload":  # the fast variant's save and reload are checked instead
            ta["save_strategy"] = "no"
    return config


def main(argv: list[str] | None = None) -> int:
    """``python bench/train_bench_setup.py DIR [--train-rows N] [--chat-rows N]``: write the
    bench's two datasets to ``DIR/adgen`` and ``DIR/chat`` and print their statistics."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--chat-rows", type=int, default=400)
    parser.add_argument("--dev-rows", type=int, default=16)
    args = parser.parse_args(argv)
    from trainer.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    for kind, rows in (("adgen", args.train_rows), ("chat", args.chat_rows)):
        stats = write_data(args.dir / kind, tokenizer, kind, rows, args.dev_rows)
        print(json.dumps(stats, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
