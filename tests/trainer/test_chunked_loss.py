"""The chunked loss equals transformers' own causal LM loss, value and gradients, through LoRA
and P-Tuning v2 wrappers, for padded and packed batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.trainer.finetune_helpers import assert_same_gradients
from tests.trainer.test_packing import train_features
from trainer.data import LeftPadCollator, PackingCollator
from trainer.loss import chunked_causal_lm_loss
from trainer.template import SpecialTokens

LORA = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
PREFIX = PrefixTuningConfig(
    task_type="CAUSAL_LM", num_virtual_tokens=4, num_attention_heads=2, token_dim=32
)


@pytest.mark.parametrize(("method", "packed"), [("lora", False), ("lora", True), ("prefix", False)])
def test_chunked_loss_matches_the_model_loss_and_gradients(
    tiny_model_dir: Path, tiny_tokenizer: Any, method: str, packed: bool
) -> None:
    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    features = train_features(tiny_tokenizer)
    collate = PackingCollator(special.endoftext) if packed else LeftPadCollator(special.endoftext)
    batch = collate(features)

    def run(chunked: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(base, LORA if method == "lora" else PREFIX)
        model.train()
        if chunked:  # chunks of 7 tokens: several per conversation
            loss = chunked_causal_lm_loss(model, dict(batch), chunk_tokens=7)
        else:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), grads

    (plain, plain_grads), (chunked, chunked_grads) = run(False), run(True)
    assert chunked == pytest.approx(plain, rel=1e-5)
    assert_same_gradients(chunked_grads, plain_grads)


def test_chunked_loss_under_mixed_precision_output_conversion(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    """HF Trainer's bf16 mode wraps the model's forward in accelerate's float32 conversion of
    every output; the chunked loss must still feed the bf16 head bf16 states (on the GPU run it
    failed with "expected mat1 and mat2 to have the same dtype")."""
    from accelerate.utils import convert_outputs_to_fp32

    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    batch = PackingCollator(special.endoftext)(train_features(tiny_tokenizer))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, LORA)
    model.train()
    reference = float(model(**batch, use_cache=False).loss)
    model.forward = convert_outputs_to_fp32(model.forward)  # what accelerate does for bf16
    loss = chunked_causal_lm_loss(model, dict(batch), chunk_tokens=7)
    loss.backward()
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(reference, rel=2e-2)  # bf16 logits against bf16 logits
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.parameters()
        if p.requires_grad
    )


def test_chunked_loss_calls_the_head_module_once_for_all_chunks(
    tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    """Each call of the output head module is, under ZeRO-3, a gather of the 1.2 GB head (and in
    the backward pass another gather and a reduce-scatter): the chunks, and their recomputation
    in the backward pass, must share one call, and the head's own forward must come back."""
    special = SpecialTokens.from_tokenizer(tiny_tokenizer)
    batch = PackingCollator(special.endoftext)(train_features(tiny_tokenizer))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    head = model.get_output_embeddings()
    calls: list[int] = []
    head.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert targets > 3 * 7  # several chunks of 7
    loss = chunked_causal_lm_loss(model, dict(batch), chunk_tokens=7)
    loss.backward()
    # the model's own one-position logits, then one call with every target position
    assert calls == [batch["input_ids"].shape[0], targets]
    assert "forward" not in head.__dict__
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
