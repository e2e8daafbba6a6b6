"""The serving bench's model, adapters and prompts (random weights of a GLM-4 shape, written to
local disk), and the collector of its requests' results."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GlmConfig

from serving.adapters import AdapterSpec
from serving.events import Event

# ---- model and adapters ---------------------------------------------------------------------


def build_model(tiny: bool, tokenizer_dir: Path, layers: int | None = None) -> Any:
    if tiny:
        return AutoModelForCausalLM.from_pretrained(tokenizer_dir, dtype=torch.float32)
    config = GlmConfig()  # glm-4-9b-chat's shape
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    for module in model.modules():  # transformers' init is small; keep activations lively
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    return model.eval()


def _dims(config: Any) -> tuple[int, int, int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.hidden_size, head_dim, config.num_attention_heads, config.num_key_value_heads


def write_lora(root: Path, config: Any, count: int, *, seed: int = 0) -> list[AdapterSpec]:
    """``count`` demo-sized LoRA adapters (r 8, alpha 32, q/k/v) with random weights."""
    hidden, head_dim, heads, kv_heads = _dims(config)
    outs = {"q_proj": heads * head_dim, "k_proj": kv_heads * head_dim}
    outs["v_proj"] = outs["k_proj"]
    generator = torch.Generator().manual_seed(seed)
    specs = []
    for i in range(count):
        tensors = {}
        for layer in range(config.num_hidden_layers):
            for kind, out in outs.items():
                key = f"base_model.model.model.layers.{layer}.self_attn.{kind}"
                tensors[f"{key}.lora_A.weight"] = _random((8, hidden), generator, 0.02)
                tensors[f"{key}.lora_B.weight"] = _random((out, 8), generator, 0.02)
        path = root / f"lora-{i:03d}"
        path.mkdir(parents=True)
        save_file(tensors, path / "adapter_model.safetensors")
        adapter = {"peft_type": "LORA", "r": 8, "lora_alpha": 32, "target_modules": list(outs)}
        (path / "adapter_config.json").write_text(json.dumps(adapter))
        specs.append(AdapterSpec.from_dir(path.name, path))
    return specs


def write_prefixes(root: Path, config: Any, count: int, tokens: int) -> list[AdapterSpec]:
    """``count`` P-Tuning v2 prefixes of ``tokens`` virtual tokens with random weights."""
    _, head_dim, _, kv_heads = _dims(config)
    layers = config.num_hidden_layers
    generator = torch.Generator().manual_seed(1)
    specs = []
    for i in range(count):
        path = root / f"prefix-{i}"
        path.mkdir(parents=True)
        embeddings = _random((tokens, layers * 2 * kv_heads * head_dim), generator, 0.5)
        save_file({"prompt_embeddings": embeddings}, path / "adapter_model.safetensors")
        adapter = {
            "peft_type": "PREFIX_TUNING",
            "num_virtual_tokens": tokens,
            "num_layers": layers,
            "num_attention_heads": kv_heads,
            "token_dim": kv_heads * head_dim,
        }
        (path / "adapter_config.json").write_text(json.dumps(adapter))
        specs.append(AdapterSpec.from_dir(path.name, path))
    return specs


def _random(shape: tuple[int, ...], generator: torch.Generator, std: float) -> torch.Tensor:
    return (torch.randn(shape, generator=generator) * std).to(torch.bfloat16)


# ---- driving the engine -------------------------------------------------------------------


class Collector:
    """Gathers the results of many requests; ``wait`` until all are done."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.tokens = 0
        self.errors: list[str] = []
        self.first: dict[int, float] = {}
        self.texts: dict[int, str] = {}
        self.done = threading.Event()
        self._lock = threading.Lock()
        if count == 0:
            self.done.set()

    def callback(self, index: int) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            if index not in self.first:
                self.first[index] = time.perf_counter()
            if event.kind == "delta":
                return
            with self._lock:
                if event.kind == "done" and event.result is not None:
                    self.tokens += event.result.completion_tokens
                    self.texts[index] = event.result.text
                else:
                    self.errors.append(event.message)
                self.left -= 1
                if self.left == 0:
                    self.done.set()

        return on_event


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, vocab // 4)
    return torch.randint(low, vocab // 2, (count, length), generator=generator).tolist()
