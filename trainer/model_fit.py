"""What a fine-tuning config must agree on with its base model, read from ``config.json`` alone.

LoRA's ``target_modules`` must name modules of the native GLM-4 classes; the upstream demo's
``lora.yaml`` names ``query_key_value``, the fused projection of the remote-code ChatGLM model,
which is read here as the native ``q_proj``, ``k_proj`` and ``v_proj`` (with a note). P-Tuning
v2's ``num_attention_heads`` and ``token_dim`` must equal the model's KV heads and
``KV heads x head_dim`` (GLM-4's cache layout); left out, they are filled in from the model.

No torch: the API runs the same checks at admission (``api.services.model_checks``) that the
trainer runs before it builds the adapter (``trainer.modeling.attach_method``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigIssue

#: The linear layers of ``GlmForCausalLM`` / ``Glm4ForCausalLM`` LoRA may target, by name.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_up_proj", "down_proj")
#: Remote-code ChatGLM names read as native ones.
REMOTE_CODE_MODULES = {"query_key_value": ("q_proj", "k_proj", "v_proj")}
#: Remote-code names with one native counterpart: refused with the name to write instead.
_REMOTE_CODE_HINTS = {
    "dense": "o_proj",
    "dense_h_to_4h": "gate_up_proj",
    "dense_4h_to_h": "down_proj",
}
_PEFT_KEYWORDS = ("all-linear",)


@dataclass(frozen=True)
class ModelShape:
    """The few facts of a base model's ``config.json`` the checks need."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        return cls(int(config["num_hidden_layers"]), kv_heads, head_dim)

    @classmethod
    def read(cls, model_dir: Path) -> ModelShape:
        """From ``model_dir/config.json``; raises ``OSError``, ``ValueError`` or ``KeyError``."""
        return cls.from_config(json.loads((model_dir / "config.json").read_text(encoding="utf-8")))

    def module_names(self) -> list[str]:
        """Full names of the modules LoRA may target, as PEFT matches them."""
        names = ["lm_head"]
        for layer in range(self.layers):
            names += [f"model.layers.{layer}.self_attn.{m}" for m in _ATTENTION]
            names += [f"model.layers.{layer}.mlp.{m}" for m in _MLP]
        return names


@dataclass
class Fitted:
    """The peft config fitted to the model, what was changed (``notes``) and what cannot be."""

    peft_config: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)


def fit_peft_config(peft: Mapping[str, Any] | None, shape: ModelShape) -> Fitted:
    """Check ``peft`` (a parsed config's ``peft_config``) against the model; a fitted copy."""
    if peft is None:
        return Fitted(None)
    config = copy.deepcopy(dict(peft))
    fitted = Fitted(config)
    kind = str(peft.get("peft_type", "")).upper()
    if kind == "LORA":
        _fit_lora(config, shape, fitted)
    elif kind == "PREFIX_TUNING":
        _fit_prefix(config, shape, fitted)
    return fitted


def _matches(target: str, names: list[str]) -> bool:
    # PEFT's rule for a list entry: the full name, or its last dotted parts
    return any(name == target or name.endswith(f".{target}") for name in names)


def _unknown(target: str) -> str:
    hint = _REMOTE_CODE_HINTS.get(target)
    because = f" ({target} is the remote-code ChatGLM name: write {hint})" if hint else ""
    return (
        f"{target!r} is not a module of this GLM-4 model{because}; write names from "
        f"{', '.join(LORA_MODULES)}, e.g. [q_proj, k_proj, v_proj]"
    )


def _fit_lora(peft: dict[str, Any], shape: ModelShape, fitted: Fitted) -> None:
    key = "peft_config.target_modules"
    targets = peft.get("target_modules")
    if targets is None or targets in _PEFT_KEYWORDS:
        return
    names = shape.module_names()
    if isinstance(targets, str) and targets not in REMOTE_CODE_MODULES:
        try:  # a string is a regular expression PEFT matches against full names
            matched = any(re.fullmatch(targets, name) for name in names)
        except re.error as exc:
            fitted.issues.append(ConfigIssue(key, f"not a valid regular expression: {exc}"))
            return
        if not matched:
            fitted.issues.append(ConfigIssue(key, _unknown(targets)))
        return
    chosen: list[str] = []
    for target in [targets] if isinstance(targets, str) else list(targets):
        if not isinstance(target, str):
            fitted.issues.append(ConfigIssue(key, f"module names are strings, got {target!r}"))
        elif target in REMOTE_CODE_MODULES:
            native = REMOTE_CODE_MODULES[target]
            fitted.notes.append(
                f"{key}: {target} (the remote-code ChatGLM name) read as {', '.join(native)}"
            )
            chosen += [m for m in native if m not in chosen]
        elif _matches(target, names):
            chosen += [target] if target not in chosen else []
        else:
            fitted.issues.append(ConfigIssue(key, _unknown(target)))
    peft["target_modules"] = chosen


def _fit_prefix(peft: dict[str, Any], shape: ModelShape, fitted: Fitted) -> None:
    expected = {"num_attention_heads": shape.kv_heads, "token_dim": shape.kv_heads * shape.head_dim}
    why = {
        "num_attention_heads": "the model's KV heads",
        "token_dim": f"KV heads x head_dim = {shape.kv_heads} x {shape.head_dim}",
    }
    for name, value in expected.items():
        given = peft.get(name)
        if given is None:
            peft[name] = value
            fitted.notes.append(f"peft_config.{name}: {value} ({why[name]})")
        elif given != value:
            fitted.issues.append(
                ConfigIssue(
                    f"peft_config.{name}",
                    f"must be {why[name]} = {value} for this model, got {given!r} "
                    "(or leave it out: it defaults to the model's)",
                )
            )
