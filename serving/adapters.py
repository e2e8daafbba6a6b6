"""What an engine serves besides its base model: LoRA adapters (injected into the base, chosen
per row at run time) and P-Tuning v2 prefixes (a per-layer key/value prefix that starts a row's
cache). Both are read from a PEFT adapter directory; the base model recorded in its
``adapter_config.json`` is never used (ARCHITECTURE.md decision 7)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

AdapterKind = Literal["lora", "prefix"]
_KINDS: dict[str, AdapterKind] = {"LORA": "lora", "PREFIX_TUNING": "prefix"}


class AdapterError(ValueError):
    """An adapter directory glmft cannot serve (missing files, another PEFT method)."""


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter to serve under ``name`` (unique per engine, e.g. the adapter id)."""

    name: str
    path: Path
    kind: AdapterKind

    @classmethod
    def from_dir(cls, name: str, path: Path) -> AdapterSpec:
        config = read_adapter_config(path)
        kind = _KINDS.get(str(config.get("peft_type")))
        if kind is None:
            raise AdapterError(
                f"{path}: PEFT method {config.get('peft_type')!r} is not served "
                f"(served: {', '.join(_KINDS)})"
            )
        return cls(name=name, path=path, kind=kind)


def read_adapter_config(path: Path) -> dict[str, Any]:
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{path}: no adapter_config.json (not an adapter checkpoint)")
    config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    return config


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
