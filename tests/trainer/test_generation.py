"""Eval-with-generation through the serving engine gives the tokens transformers' ``generate``
gives, for a PEFT LoRA model, a P-Tuning v2 model and a plain one, and leaves the model as it
was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.chat_adapters import QUESTIONS, ChatAdapters
from trainer.generation import engine_unusable, generate_all
from trainer.template import render_ids


def transformers_answers(model: Any, tokenizer: Any, prompts: list[list[int]]) -> list[list[int]]:
    eos = {
        tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")
    }
    answers = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=20,
                do_sample=False,
                repetition_penalty=1.0,
                use_cache=True,  # as chat (upstream inference.py) generates
                eos_token_id=sorted(eos),
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(prompt) :].tolist()
            answers.append([t for t in out if t not in eos])
    return answers


@pytest.mark.parametrize("name", ["lora-a", "pt", None])
def test_engine_answers_equal_transformers_generate(
    chat_adapters: ChatAdapters, name: str | None
) -> None:
    # given: the model as the trainer holds it (a PEFT model in training mode, or a plain one)
    tokenizer = AutoTokenizer.from_pretrained(chat_adapters.base)
    model: Any = AutoModelForCausalLM.from_pretrained(chat_adapters.base)
    if name is not None:
        trainable = name != "pt"  # PEFT loads prompt learning adapters frozen only
        model = PeftModel.from_pretrained(model, chat_adapters[name], is_trainable=trainable)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompts = [
        render_ids(tokenizer, [{"role": "user", "content": q}], generation_prompt=True)
        for q in (*QUESTIONS, "北京有什么好吃的？")
    ]
    # when
    ours = generate_all(model, tokenizer, prompts, max_new_tokens=20)
    # then: the model is untouched and training again, and the tokens are transformers'
    assert model.training
    model.eval()
    assert ours == transformers_answers(model, tokenizer, prompts)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_engine_is_not_used_where_it_cannot_hold_the_model(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert engine_unusable(model, world_size=1, deepspeed=False) is None
    assert engine_unusable(model, world_size=2, deepspeed=False) == "several ranks"
    assert "DeepSpeed" in str(engine_unusable(model, world_size=1, deepspeed=True))
