"""What a job's base model and data must agree on: images need a vision base, a vision base
takes only what its trainer path supports, and remote code runs only where the operator
trusted the registry entry (ARCHITECTURE.md decision 7). Checked at ``POST /jobs``, so a job
the trainer would refuse is never queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.services.datasets import DatasetFile
from api.services.model_checks import model_config
from core.datasets import is_archive_dataset
from core.errors import Invalid, InvalidConfig, UnsupportedModel
from core.settings import Settings
from trainer.config import parse_config
from trainer.vision import is_remote_code_vision, is_vision_config, vision_config_issues

TRUST_HINT = (
    "only the operator can trust a base's code: GLMFT_MODELS__{name}__TRUST_REMOTE_CODE=true "
    "on its registry entry, never a job"
)


def check_base_and_data(
    *,
    settings: Settings,
    model: str,
    model_dir: Path,
    train: DatasetFile,
    validation: DatasetFile | None,
    config: dict[str, Any],
) -> None:
    """Refuse a job whose base, data and config do not fit together (422 with its param)."""
    base_config = model_config(model_dir)
    entry = settings.models.get(model)
    trusted = bool(entry and entry.trust_remote_code)
    if (base_config.get("model_type") == "chatglm" or "auto_map" in base_config) and not trusted:
        raise UnsupportedModel(
            f"base {model!r} is a remote-code checkpoint whose code is not trusted; "
            + TRUST_HINT.format(name=model),
            param="model",
        )
    if is_remote_code_vision(base_config):
        raise UnsupportedModel(
            f"base {model!r} is GLM-4V-9B's remote-code layout, whose tokenizer builds the "
            "image inputs itself; glmft fine-tunes the native GLM-4.1V-9B "
            "(Glm4vForConditionalGeneration)",
            param="model",
        )
    archive = is_archive_dataset(Path(train.path))
    if validation is not None and (archive or is_archive_dataset(Path(validation.path))):
        raise Invalid(
            "a dataset archive carries its own validation split (dev.jsonl); do not name a "
            "validation_dataset beside an archive",
            param="validation_dataset",
        )
    vision = is_vision_config(base_config)
    if archive and not vision:
        raise Invalid(
            f"dataset {train.id} holds images but base {model!r} is not a vision model",
            param="training_dataset",
        )
    if vision:
        issues = vision_config_issues(parse_config(config))
        if issues:
            raise InvalidConfig(
                "; ".join(str(i) for i in issues),
                param=f"config.{issues[0].key}",
                details={"issues": [{"key": i.key, "message": i.message} for i in issues]},
            )
