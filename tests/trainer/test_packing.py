"""Padding-free packing: attention stays inside each conversation (packed logits equal each
conversation's own), and training with ``packing: true`` (and ``chunked_loss: true``) follows
the plain loss curve."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainer.finetune_helpers import losses, run_finetune, tiny_config, write_data
from trainer.config import ConfigError, parse_config
from trainer.data import PackingCollator
from trainer.template import IGNORE_INDEX, SpecialTokens, encode_train

CONVERSATIONS = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    for q, a in (
        ("类型#裙*颜色#红色", "这款红色连衣裙大方得体，适合多种场合。"),
        ("你好", "你好！"),
        ("类型#裤*版型#宽松*风格#休闲", "宽松的版型带来舒适的穿着体验，休闲百搭。"),
    )
]


def train_features(tokenizer: Any) -> list[dict[str, list[int]]]:
    """``CONVERSATIONS`` as the trainer encodes them (combine mode)."""
    special = SpecialTokens.from_tokenizer(tokenizer)
    return [
        {"input_ids": e.input_ids, "labels": e.labels}
        for e in (
            encode_train(tokenizer, special, c, combine=True, max_length=128) for c in CONVERSATIONS
        )
    ]


def test_packed_logits_equal_each_conversations_own(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    features = train_features(tiny_tokenizer)
    batch = PackingCollator(special.endoftext)(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(batch["position_ids"][0, s] == 0 for s in starts)
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits
        for start, feature in zip(starts, features, strict=True):
            alone = model(input_ids=torch.tensor([feature["input_ids"]])).logits[0]
            torch.testing.assert_close(
                packed[0, start : start + len(alone)], alone, atol=1e-4, rtol=1e-4
            )


def test_packed_and_chunked_loss_training_follow_the_plain_loss(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Plain, packed, packed + chunked loss, and packed + chunked under a budget so small that
    the memory plan takes every measure (host embeddings, checkpointing, 128-token chunks):
    the same loss curve on a fixed seed."""
    data = write_data(tmp_path / "data", [{"messages": c} for c in CONVERSATIONS * 4])
    variants = [(False, False, None), (True, False, None), (True, True, None), (True, True, 1e-4)]

    def train(variant: tuple[bool, bool, float | None]) -> list[dict[str, Any]]:
        packing, chunked, budget = variant
        config = tiny_config(
            "lora",
            packing=packing,
            chunked_loss=chunked,
            memory_budget_gib=budget,
            training_args={
                "max_steps": 6,
                "logging_steps": 1,
                "eval_strategy": "no",
                "save_strategy": "no",
                "per_device_train_batch_size": 4,
            },
        )
        config["data_config"] = {**config["data_config"], "val_file": None}
        config["peft_config"] = {**config["peft_config"], "lora_dropout": 0.0}
        output = tmp_path / f"out-{packing}-{chunked}-{budget}"
        proc, events = run_finetune(data, tiny_model_dir, config, output)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return events

    with ThreadPoolExecutor(len(variants)) as pool:  # the trainer processes at once
        runs = dict(zip(variants, pool.map(train, variants), strict=True))
    plain = losses(runs[variants[0]])
    assert len(plain) == 6
    for variant in variants[1:]:
        curve = losses(runs[variant])
        assert curve.keys() == plain.keys()
        for step, loss in plain.items():
            assert curve[step] == pytest.approx(loss, rel=1e-3), (variant, step, curve, plain)
    plans = {v: next(e for e in runs[v] if e["event"] == "started")["memory"] for v in variants}
    assert plans[variants[0]]["gradient_checkpointing"] is False
    lean = plans[variants[-1]]
    assert lean["host_embeddings"] and lean["gradient_checkpointing"], lean
    assert lean["loss_chunk_tokens"] == 128 and lean["over_budget"], lean


def test_packing_is_refused_for_p_tuning_v2() -> None:
    with pytest.raises(ConfigError, match="packing: not with P-Tuning v2"):
        parse_config(tiny_config("ptuning_v2", packing=True))
