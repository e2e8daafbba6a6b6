"""Padding-free packing: attention stays inside each conversation (packed logits equal each
conversation's own), and training with ``packing: true`` (and ``chunked_loss: true``) follows
the plain loss curve."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from transformers import AutoModelForCausalLM

from tests.trainer.finetune_helpers import (
    assert_same_gradients,
    losses,
    run_finetune,
    tiny_config,
    train_only_config,
    write_data,
)
from trainer.attention import behind_prefix, register_packed_attention
from trainer.config import parse_config
from trainer.data import PackingCollator
from trainer.modeling import attach_method
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
        config = train_only_config(
            "lora", 6, packing=packing, chunked_loss=chunked, memory_budget_gib=budget
        )
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


def test_behind_prefix_gives_each_conversation_the_prefix_then_its_own_keys() -> None:
    prefix, lengths = 3, [2, 4, 1]
    rows = torch.arange(prefix + sum(lengths), dtype=torch.float32).view(-1, 1, 1)
    bounds = torch.tensor([0, 2, 6, 7], dtype=torch.int32)
    keys, values, bounds_k = behind_prefix(rows, rows * 10, bounds, prefix)
    assert bounds_k.tolist() == [0, 5, 12, 16]
    assert keys.flatten().tolist() == [0, 1, 2, 3, 4, *(0, 1, 2, 5, 6, 7, 8), *(0, 1, 2, 9)]
    assert torch.equal(values, keys * 10)


def test_packed_p_tuning_equals_each_conversation_with_the_prefix(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    """P-Tuning v2 packs: each conversation of the row attends to the prefix and to itself, so
    the packed logits equal each conversation's own forward (PEFT's, with its prefix cache),
    and the prefix encoder's gradient is the sum of the conversations'."""
    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    features = train_features(tiny_tokenizer)
    batch = PackingCollator(special.endoftext)(features)
    lengths = [len(f["input_ids"]) for f in features]
    config = parse_config(tiny_config("ptuning_v2", packing=True))

    def p_tuning(attention: str | None) -> Any:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, dtype=torch.float32, attn_implementation=attention
        )
        model = attach_method(base, config)
        model.train()
        return model

    packed_model = p_tuning(register_packed_attention(prefix=True))
    logits = packed_model(**batch, use_cache=False).logits[0]
    F.cross_entropy(logits[:-1], batch["labels"][0, 1:], reduction="sum").backward()
    alone_model = p_tuning("sdpa")
    start = 0
    for feature, n in zip(features, lengths, strict=True):
        ids, labels = torch.tensor([feature["input_ids"]]), torch.tensor(feature["labels"])
        alone = alone_model(input_ids=ids, use_cache=False).logits[0]
        torch.testing.assert_close(logits[start : start + n], alone, atol=1e-4, rtol=1e-4)
        F.cross_entropy(alone[:-1], labels[1:], reduction="sum").backward()
        start += n
    grads = {n: p.grad for n, p in packed_model.named_parameters() if p.grad is not None}
    assert grads and all("prompt_encoder" in name for name in grads)
    assert_same_gradients(
        grads, {n: p.grad for n, p in alone_model.named_parameters() if p.grad is not None}
    )


def test_packed_p_tuning_trains_the_same_compiled_and_checkpointed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The trainer packs P-Tuning v2 (with the chunked loss): eager, and compiled under a budget
    so small that every layer is checkpointed, log the same falling loss curve."""
    data = write_data(tmp_path / "data", [{"messages": c} for c in CONVERSATIONS * 4])
    variants = [(False, None), (True, 1e-4)]

    def train(variant: tuple[bool, float | None]) -> list[dict[str, Any]]:
        compiled, budget = variant
        config = train_only_config(
            "ptuning_v2",
            6,
            packing=True,
            chunked_loss=True,
            compile=compiled,
            memory_budget_gib=budget,
        )
        proc, events = run_finetune(data, tiny_model_dir, config, tmp_path / f"out-{compiled}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return events

    with ThreadPoolExecutor(len(variants)) as pool:
        eager_events, lean_events = pool.map(train, variants)
    eager, lean = losses(eager_events), losses(lean_events)
    assert len(eager) == 6 and eager[6] < eager[1]
    for step, loss in eager.items():
        assert lean[step] == pytest.approx(loss, rel=1e-3), (step, lean, eager)
    plan = next(e for e in lean_events if e["event"] == "started")["memory"]
    assert plan["gradient_checkpointing"], plan
    assert any(e["event"] == "compile" for e in lean_events)
