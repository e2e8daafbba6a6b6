"""Load a base model, a LoRA / P-Tuning v2 adapter or a full-SFT checkpoint, and generate replies
(the upstream ``inference.py``, glm4-reference.md §3 and §7.19)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.modeling import (
    check_model_dir,
    compute_dtype,
    load_adapter,
    load_model,
    load_tokenizer,
)
from trainer.template import Message, SpecialTokens, clean_message, render_ids


@dataclass(frozen=True)
class SamplingParams:
    """Upstream inference defaults: top_p 0.8, temperature 0.8, repetition_penalty 1.2."""

    max_new_tokens: int = 1024
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.8
    repetition_penalty: float = 1.2
    seed: int | None = None


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    special: SpecialTokens
    base_dir: Path
    adapter_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def reply(self, messages: list[Message], params: SamplingParams | None = None) -> str:
        params = params or SamplingParams()
        prompt = render_ids(
            self.tokenizer, [clean_message(m) for m in messages], generation_prompt=True
        )
        input_ids = torch.tensor([prompt], device=self.model.device)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.do_sample
            else {"do_sample": False}
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=params.max_new_tokens,
                repetition_penalty=params.repetition_penalty,
                eos_token_id=self.special.eos_ids,
                pad_token_id=self.special.endoftext,
                **sampling,
            )
        text: str = self.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)
        return text.strip()


def adapter_base(adapter_dir: Path) -> Path:
    """The base model directory an adapter was trained on, as recorded in its config."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return Path(config["base_model_name_or_path"])


def load_chat_model(path: Path, *, base_dir: Path | None = None) -> ChatModel:
    """``path`` is a base/full-SFT model directory or an adapter (checkpoint) directory.

    For an adapter the base comes from ``base_dir`` when given, else from the path recorded in
    ``adapter_config.json`` (a moved base model needs ``base_dir``).
    """
    is_adapter = (path / "adapter_config.json").is_file()
    base = base_dir or (adapter_base(path) if is_adapter else path)
    if is_adapter and not base.is_dir():
        raise FileNotFoundError(
            f"the adapter's base model {base} does not exist: pass the base model directory"
        )
    check_model_dir(base)
    tokenizer = load_tokenizer(path if (path / "tokenizer.json").is_file() else base)
    model = load_model(path if not is_adapter else base, dtype=compute_dtype(), use_cache=True)
    if is_adapter:
        model = load_adapter(model, path)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return ChatModel(
        model=model,
        tokenizer=tokenizer,
        special=SpecialTokens.from_tokenizer(tokenizer),
        base_dir=base,
        adapter_dir=path if is_adapter else None,
    )
