"""What an engine serves besides its base model: LoRA adapters (a slot of the LoRA pool, chosen
per row at run time) and P-Tuning v2 prefixes (per-layer keys and values that start a row's
cache). Both are read from a PEFT adapter directory; the base model recorded in its
``adapter_config.json`` is never used (ARCHITECTURE.md decision 7). Torch-free: the API names
adapters without loading torch; :mod:`serving.weights` reads their tensors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
