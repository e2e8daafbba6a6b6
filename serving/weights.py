"""The tensors of a PEFT adapter directory, on the CPU: LoRA weights and P-Tuning v2 prefixes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from serving.adapters import AdapterError, read_adapter_config


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's saved tensors, on the CPU."""
    safetensors = path / "adapter_model.safetensors"
    if safetensors.is_file():
        return load_file(safetensors)
    legacy = path / "adapter_model.bin"
    if legacy.is_file():
        weights: dict[str, torch.Tensor] = torch.load(legacy, map_location="cpu", weights_only=True)
        return weights
    raise AdapterError(f"{path}: no adapter_model.safetensors")


@dataclass
class Prefix:
    """A P-Tuning v2 prefix: ``layers[i] = (keys, values)``, each ``(1, kv_heads, tokens, dim)``."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[2])

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)


def load_prefix(
    path: Path, model_config: Any, *, device: torch.device, dtype: torch.dtype
) -> Prefix:
    """The per-layer cache prefix PEFT's ``get_prompt`` builds, from the saved embeddings.

    PEFT saves a prefix adapter as ``prompt_embeddings``, ``(tokens, layers * 2 * token_dim)``:
    the key and value of every layer for each virtual token (already through the projection
    when ``prefix_projection`` was on).
    """
    config = read_adapter_config(path)
    embeddings = adapter_weights(path).get("prompt_embeddings")
    if embeddings is None:
        raise AdapterError(f"{path}: no prompt_embeddings in a prefix-tuning adapter")
    tokens, layers = int(config["num_virtual_tokens"]), int(config["num_layers"])
    heads, token_dim = int(config["num_attention_heads"]), int(config["token_dim"])
    if layers != model_config.num_hidden_layers or heads != model_config.num_key_value_heads:
        raise AdapterError(
            f"{path}: prefix for {layers} layers x {heads} KV heads, but the base model has "
            f"{model_config.num_hidden_layers} x {model_config.num_key_value_heads}"
        )
    kv = embeddings.to(device=device, dtype=dtype).view(
        1, tokens, layers * 2, heads, token_dim // heads
    )
    kv = kv.permute(2, 0, 3, 1, 4)  # (layers * 2, 1, heads, tokens, dim)
    return Prefix([(kv[2 * i].contiguous(), kv[2 * i + 1].contiguous()) for i in range(layers)])
