"""P-Tuning v2's prefix served to each layer as its own slice (trainer.prefix): with gradient
checkpointing it trains exactly as without (upstream drops the prefix from checkpointed layers,
and the run fails on the attention mask), and evaluation still gets the real cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainer.finetune_helpers import assert_same_gradients, steps_on_random_ids, tiny_config
from trainer.config import parse_config
from trainer.modeling import attach_method, decoder_layers
from trainer.prefix import PrefixByLayer


def train(model_dir: Path, *, checkpointing: bool) -> list[tuple[float, dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = attach_method(base, parse_config(tiny_config("ptuning_v2")))
    if checkpointing:  # as HF Trainer turns it on, after the adapter is attached
        model.gradient_checkpointing_enable({"use_reentrant": False})
        base.enable_input_require_grads()
    model.train()
    return steps_on_random_ids(model, (12, 19))


def test_checkpointed_p_tuning_trains_as_without(tiny_model_dir: Path) -> None:
    plain = train(tiny_model_dir, checkpointing=False)
    for (loss, grads), (want, want_grads) in zip(
        train(tiny_model_dir, checkpointing=True), plain, strict=True
    ):
        assert loss == pytest.approx(want, rel=1e-5)
        assert_same_gradients(grads, want_grads)


def test_generation_still_reads_the_prefix_from_the_cache(tiny_model_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = attach_method(base, parse_config(tiny_config("ptuning_v2")))
    assert all(isinstance(layer.forward, PrefixByLayer) for layer in decoder_layers(model))
    torch.nn.init.normal_(next(model.prompt_encoder.parameters()), std=1.0)
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        tuned = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        with model.disable_adapter():
            plain = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert not torch.equal(tuned, plain)  # the prefix reached the layers through the cache
