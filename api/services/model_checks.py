"""Checks of a job's config that depend on its base model, run at admission.

The base model's ``config.json`` is read from the registry path (once per file version) and the
trainer's own rules (:mod:`trainer.model_fit`) applied, so a config the trainer would refuse for
this model (a LoRA target the model lacks, a P-Tuning v2 prefix of the wrong shape) is refused by
``POST /jobs`` with the key at fault, instead of failing in the worker. What the rules fill in or
read differently (``query_key_value`` as ``q_proj, k_proj, v_proj``) is stored fitted on the job and
returned as notes. When this API host cannot read the model's ``config.json`` the checks are left
to the trainer (which runs the same rules) and a warning is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import InvalidConfig
from trainer.model_fit import ModelShape, fit_peft_config
from trainer.vision import read_model_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FittedConfig:
    """The job's config fitted to its base model, and what the fitting changed."""

    config: dict[str, Any]
    notes: list[str]


@lru_cache(maxsize=64)
def _config(config_file: str, _mtime_ns: int) -> dict[str, Any]:
    return read_model_config(Path(config_file).parent)


def model_config(model_dir: Path) -> dict[str, Any]:
    """The base model's ``config.json``, read once per file version (empty when it cannot be
    read here). Shared between callers: read it, never change it."""
    config_file = model_dir / "config.json"
    try:
        return _config(str(config_file), config_file.stat().st_mtime_ns)
    except OSError:
        return {}


def model_shape(model_dir: Path) -> ModelShape | None:
    """The base model's shape from its ``config.json``; None when it cannot be read here."""
    try:
        return ModelShape.from_config(model_config(model_dir))
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning(
            "cannot read %s (%s): model checks are left to the trainer",
            model_dir / "config.json",
            repr(exc),
        )
        return None


def _param(key: str, overrides: Mapping[str, Any]) -> str:
    from_override = any(
        key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in overrides
    )
    return f"{'overrides' if from_override else 'config'}.{key}"


def fit_config_to_model(
    config: dict[str, Any], model_dir: Path, overrides: Mapping[str, Any]
) -> FittedConfig:
    """``config`` (resolved) checked against the base model in ``model_dir``.

    Raises:
        InvalidConfig: naming the first key at fault (``config.<key>`` or ``overrides.<key>``),
            every problem listed in ``details.issues``.
    """
    shape = model_shape(model_dir)
    if shape is None or config.get("peft_config") is None:
        return FittedConfig(config, [])
    fitted = fit_peft_config(config["peft_config"], shape)
    if fitted.issues:
        issues = [
            {"key": i.key, "message": i.message, "param": _param(i.key, overrides)}
            for i in fitted.issues
        ]
        raise InvalidConfig(
            "; ".join(str(i) for i in fitted.issues),
            param=issues[0]["param"],
            details={"issues": issues},
        )
    for note in fitted.notes:
        logger.info("config fitted to %s: %s", model_dir.name, note)
    return FittedConfig({**config, "peft_config": fitted.peft_config}, fitted.notes)
