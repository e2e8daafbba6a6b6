"""``compile: true``: the decoder layers run through torch.compile (inductor, C++ on CPU) with the
same losses and gradients as eager, one compile for packed batches of every length, and the
combinations it cannot serve are config errors."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from peft import LoraConfig, get_peft_model
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM
from transformers.models.glm import modeling_glm

from tests.trainer.finetune_helpers import (
    assert_same_gradients,
    losses,
    run_finetune,
    steps_on_random_ids,
    tiny_config,
    write_data,
)
from tests.trainer.test_packing import CONVERSATIONS, train_features
from trainer.compile import (
    CompiledForward,
    compile_decoder_layers,
    compile_layer_functions,
    compile_stats,
)
from trainer.config import ConfigError, parse_config
from trainer.data import PackingCollator
from trainer.modeling import attach_method
from trainer.template import SpecialTokens

STEPS = 8


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches and counters emptied before and after: its state is per process."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    counters.clear()


def test_compiled_layers_match_eager_and_compile_once_for_every_length(
    tiny_model_dir: Path, tiny_tokenizer: Any, fresh_dynamo: None
) -> None:
    """LoRA with dropout under gradient checkpointing, packed batches of six different lengths:
    one compiled frame and graph for both layers and every batch, and the loss and every
    gradient equal eager's (inductor draws the dropout masks from eager's generator here)."""
    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    features = train_features(tiny_tokenizer)
    picks = [[0, 1], [0, 1, 2], [0, 0], [1, 2, 0, 0], [2, 0, 0, 0, 0], [0, 0, 0]]
    batches = [PackingCollator(special.endoftext)([features[i] for i in p]) for p in picks]
    assert len({b["input_ids"].shape[1] for b in batches}) == len(batches)

    def train(compiled: bool) -> list[tuple[float, dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        lora = LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.1,
            target_modules=["q_proj", "v_proj", "gate_up_proj", "down_proj"],
            init_lora_weights=False,
        )
        model = get_peft_model(base, lora)
        model.gradient_checkpointing_enable({"use_reentrant": False})
        base.enable_input_require_grads()
        model.train()
        if compiled:
            assert compile_decoder_layers(model) == 2
            assert all(isinstance(layer.forward, CompiledForward) for layer in base.model.layers)
        results = []
        for step, batch in enumerate(batches):
            torch.manual_seed(step)
            loss = model(**batch, use_cache=False).loss
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((loss.item(), grads))
            model.zero_grad()
        return results

    with torch._inductor.config.patch(fallback_random=True):
        compiled = train(True)
    stats = compile_stats()
    assert stats["frames"] == 1 and stats["graphs"] == 1 and stats["graph_breaks"] == 0, stats
    eager = train(False)
    assert compile_stats()["frames"] == 1  # the eager run compiled nothing
    for (loss, grads), (eager_loss, eager_grads) in zip(compiled, eager, strict=True):
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert_same_gradients(grads, eager_grads)


def test_p_tuning_prefix_shares_one_graph_and_matches_eager(
    tiny_model_dir: Path, fresh_dynamo: None
) -> None:
    """The prefix reaches each layer through a KV cache indexed by layer; compiled, all layers
    still share one graph, and the loss and the prefix encoder's gradient equal eager's."""

    def train(compiled: bool) -> list[tuple[float, dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = attach_method(base, parse_config(tiny_config("ptuning_v2")))
        model.train()
        if compiled:
            compile_decoder_layers(model)
        return steps_on_random_ids(model, (20, 27, 33))

    compiled = train(True)
    stats = compile_stats()
    assert stats["frames"] == 1 and stats["graph_breaks"] == 0, stats
    for (loss, grads), (eager_loss, eager_grads) in zip(compiled, train(False), strict=True):
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert_same_gradients(grads, eager_grads)


def test_compiled_training_follows_the_eager_loss_curve(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The trainer with ``compile: true`` (LoRA, packing, chunked loss; then also the memory
    plan's every measure: host embeddings, gradient checkpointing, 128-token loss chunks, and a
    save and a generation eval) logs eager's losses within 0.1%, compiles once for all steps, and
    reports it in events."""
    data = write_data(tmp_path / "data", [{"messages": c} for c in CONVERSATIONS * 4])
    write_data(data, [{"messages": c} for c in CONVERSATIONS], name="dev.jsonl")
    variants = [(False, None), (True, None), (True, 1e-4)]

    def train(variant: tuple[bool, float | None]) -> list[dict[str, Any]]:
        compiled, budget = variant
        lean = budget is not None
        config = tiny_config(
            "lora",
            packing=True,
            chunked_loss=True,
            compile=compiled,
            memory_budget_gib=budget,
            training_args={
                "max_steps": STEPS,
                "logging_steps": 1,
                "eval_strategy": "steps" if lean else "no",
                "eval_steps": STEPS,
                "save_strategy": "steps" if lean else "no",
                "save_steps": STEPS,
                "per_device_train_batch_size": 4,
            },
        )
        if not lean:
            config["data_config"] = {**config["data_config"], "val_file": None}
        output = tmp_path / f"out-{compiled}-{budget}"
        proc, events = run_finetune(data, tiny_model_dir, config, output)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return events

    with ThreadPoolExecutor(len(variants)) as pool:
        runs = dict(zip(variants, pool.map(train, variants), strict=True))
    eager = losses(runs[variants[0]])
    assert len(eager) == STEPS
    for variant in variants[1:]:
        curve = losses(runs[variant])
        assert curve.keys() == eager.keys()
        for step, loss in eager.items():
            assert curve[step] == pytest.approx(loss, rel=1e-3), (variant, step, curve, eager)
    for variant, events in runs.items():
        started = next(e for e in events if e["event"] == "started")
        assert started["compiled_layers"] == (2 if variant[0] else 0)
        reports = [e for e in events if e["event"] == "compile"]
        assert len(reports) == (1 if variant[0] else 0)
    for variant in variants[1:]:
        report = next(e for e in runs[variant] if e["event"] == "compile")
        assert report["layers"] == 2 and report["graph_breaks"] == 0, report
        # one compiled frame serves both layers and every packed length; the lean run may split
        # batches into micro-batches of one conversation, whose row has no mask: a second graph
        most = 1 if variant[1] is None else 2
        assert 1 <= report["frames"] <= most and report["graphs"] <= most, report
    lean = runs[variants[-1]]
    plan = next(e for e in lean if e["event"] == "started")["memory"]
    assert plan["host_embeddings"] and plan["gradient_checkpointing"], plan
    assert {"checkpoint", "eval"} <= {e["event"] for e in lean}


def test_compile_is_refused_where_it_cannot_serve() -> None:
    assert parse_config(tiny_config("lora", compile=True)).compile
    assert parse_config(tiny_config("sft", compile=True)).compile
    assert parse_config(tiny_config("ptuning_v2", compile=True)).compile
    for key, value in (("torch_compile", True), ("torch_compile_mode", "max-autotune")):
        with pytest.raises(ConfigError, match=r"compile: .*training_args\.torch_compile"):
            parse_config(tiny_config("lora", compile=True, training_args={key: value}))


def test_under_zero3_the_layer_functions_compile_and_match_eager(
    tiny_model_dir: Path, fresh_dynamo: None
) -> None:
    """What ``compile: true`` compiles under ZeRO-3 (full SFT, gradient checkpointing, three
    lengths): RMSNorm, the SwiGLU gate and RoPE, one graph each for every layer and length, the
    matrix-owning modules left to their hooks; the loss and every gradient equal eager's, and
    without grad (evaluation) the eager functions run."""
    rope = modeling_glm.apply_rotary_pos_emb

    def train(compiled: bool) -> list[tuple[float, dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        if compiled:
            assert compile_layer_functions(model) == 2
            layer = model.model.layers[0]  # ZeRO-3 gathers these modules' weights: not compiled
            assert "forward" not in vars(layer.self_attn.q_proj)
            assert "forward" not in vars(layer.mlp.gate_up_proj)
        return steps_on_random_ids(model, (20, 27, 33))

    try:
        compiled = train(True)
        stats = compile_stats()
        assert stats["frames"] == 3 and stats["graph_breaks"] == 0, stats
        with torch.no_grad():
            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
            compile_layer_functions(model)
            model(input_ids=torch.tensor([[5, 6, 7]]))
        assert compile_stats()["frames"] == 3
    finally:
        modeling_glm.apply_rotary_pos_emb = rope  # a module global: the next tests run eager
    for (loss, grads), (eager_loss, eager_grads) in zip(compiled, train(False), strict=True):
        assert loss == pytest.approx(eager_loss, rel=1e-5)
        assert_same_gradients(grads, eager_grads)
