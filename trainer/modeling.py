"""Loading the base model and tokenizer, and attaching LoRA / P-Tuning v2 adapters."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_config, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
)

from trainer.config import ConfigError, FinetuningConfig
from trainer.model_fit import ModelShape, fit_peft_config
from trainer.prefix import serve_prefix_by_layer
from trainer.vision import (
    VISION_MODEL_TYPES,
    is_vision_config,
    lora_target_pattern,
    read_model_config,
)

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("glm", "glm4", *VISION_MODEL_TYPES)


class UnsupportedModelError(ValueError):
    """The model directory holds no native GLM-4 checkpoint."""


def is_remote_code(config: dict[str, Any]) -> bool:
    """A checkpoint whose modeling code ships with it (``auto_map``, ChatGLM's layout)."""
    return config.get("model_type") == "chatglm" or "auto_map" in config


def check_model_dir(model_dir: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Read ``config.json`` and refuse what glmft cannot train (other families, and remote
    code unless ``trust_remote_code``: the operator's choice for one registry entry)."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise UnsupportedModelError(f"{model_dir}: no config.json (not a model directory)")
    config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if is_remote_code(config):
        if trust_remote_code:
            return config
        raise UnsupportedModelError(
            f"{model_dir} is a remote-code checkpoint (model_type {model_type!r}) and its code "
            "is not trusted; glmft trains the native transformers classes: use "
            "THUDM/glm-4-9b-chat-hf or GLM-4-9B-0414 (GLM-4.1V-9B for images), or have the "
            "operator trust this base (trust_remote_code on its registry entry)"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{model_dir}: model_type {model_type!r} is not GLM-4 "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


def configure_cuda_kernels() -> None:
    """Turn off cuDNN's fused attention for training.

    On H100/H200 (torch 2.11, cuDNN 9.19) its backward pass returns non-finite gradients for
    padded batches whose width is 64 mod 128 with fully masked rows: left-padded LoRA at batch 4
    went NaN within 10 steps (docs/benchmarks.md). The flash/efficient SDPA kernels are exact
    there and were faster in the same run (0.38 -> 0.25 s per step at batch 1).
    """
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def compute_dtype() -> torch.dtype:
    """bf16 on a GPU that supports it (upstream's "must use BFloat16"), fp32 on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(model_dir: Path, *, trust_remote_code: bool = False) -> Any:
    options = {"trust_remote_code": True} if trust_remote_code else {}
    return AutoTokenizer.from_pretrained(model_dir, padding_side="left", **options)


def load_model(
    model_dir: Path,
    *,
    dtype: torch.dtype,
    use_cache: bool = False,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """The model of ``model_dir``: a causal LM, or a native GLM-4 vision model
    (``Glm4vForConditionalGeneration``); remote code only when ``trust_remote_code``."""
    options: dict[str, Any] = (
        {"attn_implementation": attn_implementation} if attn_implementation else {}
    )
    if trust_remote_code:
        options["trust_remote_code"] = True
    vision = is_vision_config(read_model_config(model_dir))
    if vision:  # use_cache lives on its text config
        model: PreTrainedModel = AutoModelForImageTextToText.from_pretrained(
            model_dir, dtype=dtype, **options
        )
        model.config.text_config.use_cache = use_cache
        return model
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, use_cache=use_cache, **options
    )
    return model


class HostEmbedding(torch.nn.Module):
    """A frozen input embedding kept in host memory: the lookup runs on the CPU and only the
    looked-up rows travel to the GPU. For adapter training it frees ``vocab x hidden`` GPU memory
    (1.16 GiB for GLM-4's 151,552 x 4,096 in bf16) for one small copy a step.

    The table is a plain attribute, not a parameter or buffer, so ``model.to(device)`` leaves it
    where it is; ``_device`` (an empty buffer) follows the model and says where rows go.
    """

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        super().__init__()
        self.table = embedding.weight.detach().to("cpu")
        self.padding_idx = embedding.padding_idx
        self.register_buffer("_device", torch.empty(0, dtype=self.table.dtype), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # what callers of get_input_embeddings().weight expect
        return self.table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(input_ids.to("cpu"), self.table, self.padding_idx)
        if self._device.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self._device.device, non_blocking=True)


def keep_embeddings_on_host(model: PreTrainedModel) -> bool:
    """Swap the input embedding of ``model`` (before an adapter is attached: the table must
    stay frozen) for a :class:`HostEmbedding`; False, and nothing changed, when it is tied to
    the output head."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding) or model.config.tie_word_embeddings:
        return False
    model.set_input_embeddings(HostEmbedding(embedding))
    return True


def fit_to_model(peft: dict[str, Any], model_config: Any) -> dict[str, Any]:
    """``peft`` checked against the model (:mod:`trainer.model_fit`): LoRA targets read as
    native module names, P-Tuning v2's prefix shape filled in; raises ``ConfigError``."""
    fitted = fit_peft_config(peft, ModelShape.from_config(model_config.to_dict()))
    if fitted.issues:
        raise ConfigError(fitted.issues)
    for note in fitted.notes:
        logger.warning("%s", note)
    return fitted.peft_config if fitted.peft_config is not None else peft


def base_model(model: Any) -> Any:
    """The transformers model inside DeepSpeed/DDP (``.module``) and PEFT wrappers."""
    core = getattr(model, "module", model)
    return core.get_base_model() if hasattr(core, "get_base_model") else core


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder's layers, through DeepSpeed/DDP (``.module``) and PEFT wrappers."""
    layers = getattr(base_model(model).get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise TypeError(f"{type(base_model(model)).__name__} has no decoder layers")
    return layers


def attach_method(
    model: PreTrainedModel, config: FinetuningConfig, *, gradient_checkpointing: bool = False
) -> PreTrainedModel:
    """Wrap ``model`` for the config's method; full SFT returns it unchanged (a vision model's
    tower frozen under ``freezeV``, as upstream's ``finetune_vision.py``)."""
    vision = getattr(model.config, "model_type", None) in VISION_MODEL_TYPES
    if config.peft_config is None:
        if vision and config.freezeV:
            for parameter in model.model.visual.parameters():
                parameter.requires_grad_(False)
        return model
    peft = dict(config.peft_config)
    if vision:  # the tower's and the language model's names (trainer.vision); no P-Tuning v2
        if "target_modules" in peft:
            peft["target_modules"] = lora_target_pattern(
                peft["target_modules"], freeze_vision=config.freezeV
            )
    else:
        peft = fit_to_model(peft, model.config)
    peft.setdefault("task_type", "CAUSAL_LM")
    wrapped = get_peft_model(model, get_peft_config(peft))
    if peft["peft_type"] == "PREFIX_TUNING":  # safe under checkpointing and torch.compile
        serve_prefix_by_layer(decoder_layers(wrapped))
    if gradient_checkpointing:  # checkpointed layers need an input that requires grad
        model.enable_input_require_grads()
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info(
        "trainable params: %s || all params: %s || trainable%%: %.4f",
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return wrapped


def load_adapter(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(base, adapter_dir)


def parameter_counts(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameters, the full sizes under ZeRO-3's partitioning."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)

    def numel(p: Any) -> int:  # ZeRO-3 partitions parameters: ds_numel is the full size
        return int(getattr(p, "ds_numel", 0) or p.numel())

    total = sum(numel(p) for p in model.parameters())
    return sum(numel(p) for p in model.parameters() if p.requires_grad), total
