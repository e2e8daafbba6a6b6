"""What makes a base model a vision model, and the config rules of vision fine-tuning.

glmft trains the transformers-native GLM-4 vision family (``Glm4vForConditionalGeneration``,
``model_type: "glm4v"``, e.g. GLM-4.1V-9B): a vision tower (``model.visual``) whose image
features replace the ``<|image|>`` placeholder tokens of the prompt, and a GLM-4 language model
(``model.language_model``). This module reads ``config.json`` only; it never imports torch, so
the service can ask it which registry entries are vision models.

Upstream's ``freezeV`` keeps its meaning: ``true`` (every shipped config) trains the language
model only, so LoRA targets only its modules and full SFT leaves the vision tower frozen;
``false`` lets LoRA's ``target_modules`` match in the vision tower too (its blocks name their
layers ``qkv``, ``proj``, ``gate_proj``, ``up_proj``, ``down_proj``) and SFT train it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from trainer.config import ConfigIssue, FinetuningConfig

#: Native vision model types glmft trains and serves.
VISION_MODEL_TYPES: tuple[str, ...] = ("glm4v",)
#: Where the language model's modules live in ``Glm4vForConditionalGeneration``.
LANGUAGE_MODEL_PREFIX = "model.language_model."
#: Image placeholder token: the processor repeats it once per merged image patch.
IMAGE_TOKEN = "<|image|>"


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of ``model_dir`` (empty when missing or unreadable)."""
    try:
        config: dict[str, Any] = json.loads((model_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return config


def is_vision_config(config: dict[str, Any]) -> bool:
    """A native GLM-4 vision model's config (``model_type`` ``glm4v``)."""
    return config.get("model_type") in VISION_MODEL_TYPES


def is_remote_code_vision(config: dict[str, Any]) -> bool:
    """GLM-4V-9B's own (remote-code) layout: a ChatGLM config with a ``vision_config``."""
    return config.get("model_type") == "chatglm" and "vision_config" in config


@lru_cache(maxsize=64)
def is_vision_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a vision model (native or GLM-4V-9B's remote code); cached:
    a registered base does not change its kind."""
    config = read_model_config(model_dir)
    return is_vision_config(config) or is_remote_code_vision(config)


def vision_config_issues(config: FinetuningConfig) -> list[ConfigIssue]:
    """What a vision run cannot do, each as a config issue (the trainer exits with code 2)."""
    issues = []
    if config.method == "ptuning_v2":
        issues.append(
            ConfigIssue(
                "peft_config.peft_type",
                "P-Tuning v2 is not supported for vision models (upstream trains GLM-4V with "
                "LoRA); use LoRA or full SFT",
            )
        )
    refused = {
        "packing": "a packed row would need one multimodal RoPE index per conversation; "
        "vision batches are padded",
        "chunked_loss": "not implemented for vision models",
        "compile": "not implemented for vision models",
        "memory_budget_gib": "the memory plan does not model the vision tower",
    }
    for key, why in refused.items():
        if getattr(config, key):
            issues.append(ConfigIssue(key, f"must be off for a vision model: {why}"))
    return issues


def lora_target_pattern(targets: Any, *, freeze_vision: bool) -> Any:
    """LoRA's ``target_modules`` for a vision model: with ``freeze_vision`` a regex that
    matches the names only inside the language model, else the names as given."""
    if not freeze_vision or targets is None or isinstance(targets, str):
        return targets  # a regex given by the user is taken as it is
    names = "|".join(re.escape(str(t)) for t in targets)
    return rf"{re.escape(LANGUAGE_MODEL_PREFIX)}.*\.(?:{names})"
