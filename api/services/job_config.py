"""Resolve a job's training config: preset or YAML, dotted overrides, and the service's rules.

The result is the job's run config (``trainer.contract.run_config``): the fully-resolved
upstream-style config (``trainer.config.FinetuningConfig`` dumped to a dict) in the job
directory's terms, which the worker writes to ``config.yaml`` verbatim and the trainer reads
unchanged. It holds no server path, so callers are shown it as stored. Every refusal is an
``InvalidConfig`` whose ``param`` names the request field (``config.<key>``,
``overrides.<key>``, ``method`` or ``seed``) and whose ``details.issues`` lists all problems.
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from core.errors import InvalidConfig
from core.settings import Limits
from trainer.config import ConfigError, ConfigIssue, load_yaml, parse_config
from trainer.config_rules import MAX_DEPTH, measure
from trainer.contract.run_config import (
    SHIPPED_CONFIGS,
    SHIPPED_DEEPSPEED,
    run_config,
    shipped_deepspeed_name,
)

CONFIGS_DIR = SHIPPED_CONFIGS
#: training_args that are paths: relative, inside the job directory, if set at all.
PATH_ARGS = ("output_dir", "logging_dir")
TRUST_REMOTE_CODE = (
    "cannot be set by a job: the operator trusts a base's code on its registry entry "
    "(GLMFT_MODELS__<name>__TRUST_REMOTE_CODE)"
)
_FORBIDDEN_ARGS = {
    "resume_from_checkpoint": "resume a job with POST /jobs/{id}/resume",
    "push_to_hub": "glmft never uploads; adapters are served by this service",
    "hub_token": "glmft never uploads; adapters are served by this service",
    "parallelism_config": "glmft launches the ranks itself",
}
#: training_args Hugging Face reads a file for when given a string: only a mapping is taken
#: (a path would let a job open any file of a worker)
MAPPING_ARGS = (
    "accelerator_config",
    "fsdp_config",
    "activation_checkpointing_kwargs",
    "gradient_checkpointing_kwargs",
    "lr_scheduler_kwargs",
)
#: training_args a CPU job (gpus 0) cannot run with
GPU_ONLY_ARGS = ("fp16", "fp16_full_eval", "tf32")


@dataclass(frozen=True)
class ResolvedConfig:
    """The config to store on the job and what the API reads from it."""

    config: dict[str, Any]
    max_steps: int | None


@cache
def presets() -> dict[str, Path]:
    """Shipped presets by name: ``lora``, ``sft``, ``tiny/lora``, ... (read once: they ship)."""
    return {
        path.relative_to(CONFIGS_DIR).with_suffix("").as_posix(): path
        for path in sorted(CONFIGS_DIR.rglob("*.yaml"))
    }


@cache
def _preset(name: str) -> Any:
    """A parsed preset; YAML parsing was the largest cost of POST /jobs (docs/benchmarks.md)."""
    return load_yaml(presets()[name].read_text(encoding="utf-8"), f"preset {name}")


def _load_base(config: str | None, method: str) -> dict[str, Any]:
    name = config.strip() if config is not None else method
    known = presets()
    if name in known:
        data = copy.deepcopy(_preset(name))
    elif "\n" in name or ":" in name:
        data = load_yaml(name, "config")
    else:
        raise InvalidConfig(
            f"unknown preset {name!r} (known: {', '.join(known)}); or send a YAML document",
            param="config",
            details={"presets": list(known)},
        )
    if not isinstance(data, dict):
        raise InvalidConfig("the config must be a YAML mapping of keys", param="config")
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> ConfigIssue | None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            return ConfigIssue(key, f"{where} is a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)
    return None


def _apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for key, value in overrides.items():
        if not key or any(not part for part in key.split(".")):
            issues.append(ConfigIssue(key, "not a dotted key like training_args.max_steps"))
        elif key.split(".")[-1] == "trust_remote_code":
            issues.append(ConfigIssue(key, TRUST_REMOTE_CODE))
        elif key == "data_config" or key.startswith("data_config."):
            issues.append(ConfigIssue(key, "set by glmft from training_dataset/validation_dataset"))
        else:
            issue = _set_dotted(data, key, value)
            if issue is not None:
                issues.append(issue)
    return issues


def _service_rules(args: dict[str, Any]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for key in PATH_ARGS:
        value = args.get(key)
        if value is None:
            continue
        norm = posixpath.normpath(str(value))
        if posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or "~" in norm:
            issues.append(
                ConfigIssue(
                    f"training_args.{key}", "must be a relative path inside the job directory"
                )
            )
    for key, why in _FORBIDDEN_ARGS.items():
        if args.get(key):
            issues.append(ConfigIssue(f"training_args.{key}", f"cannot be set: {why}"))
    for key in MAPPING_ARGS:
        if isinstance(args.get(key), str):
            issues.append(
                ConfigIssue(f"training_args.{key}", "must be a mapping; file paths are not taken")
            )
    deepspeed = args.get("deepspeed")
    if deepspeed is not None and shipped_deepspeed_name(str(deepspeed)) is None:
        shipped = ", ".join(f"configs/{name}" for name in SHIPPED_DEEPSPEED)
        issues.append(ConfigIssue("training_args.deepspeed", f"must be one of {shipped}"))
    return issues


def _param(issue: ConfigIssue, overrides: dict[str, Any]) -> str:
    if issue.key in ("method", "seed"):
        return issue.key
    from_override = any(
        issue.key == k or issue.key.startswith(f"{k}.") or k.startswith(f"{issue.key}.")
        for k in overrides
    )
    prefix = "overrides" if from_override else "config"
    return f"{prefix}.{issue.key}" if issue.key else prefix


def _refuse(issues: list[ConfigIssue], overrides: dict[str, Any]) -> InvalidConfig:
    first = issues[0]
    listed = [{"key": i.key, "message": i.message, "param": _param(i, overrides)} for i in issues]
    return InvalidConfig(
        "; ".join(str(i) for i in issues),
        param=_param(first, overrides),
        details={"issues": listed},
    )


def _check_seed(
    args: dict[str, Any], seed: int | None, overrides: dict[str, Any]
) -> list[ConfigIssue]:
    if seed is None:
        return []
    chosen = overrides.get("training_args.seed")
    if chosen is not None and chosen != seed:
        return [
            ConfigIssue("seed", f"seed is {seed} but overrides set training_args.seed={chosen}")
        ]
    args["seed"] = seed
    return []


def _cost_issues(data: dict[str, Any], limits: Limits) -> list[ConfigIssue]:
    """A config too large once its YAML aliases are expanded, or with too long a string."""
    shape = measure(data)
    if shape.cycle or shape.depth > MAX_DEPTH:
        return []  # parse_config refuses it, with its own words
    if shape.longest > limits.max_config_string and shape.size <= 64 * limits.max_config_bytes:
        return [  # named, when the document is small enough to walk
            ConfigIssue(key, f"is longer than {limits.max_config_string} characters")
            for key in _long_strings(data, limits.max_config_string)
        ]
    if shape.size > limits.max_config_bytes:
        return [
            ConfigIssue(
                "",
                f"the config expands to {shape.size} bytes (YAML aliases included); "
                f"at most {limits.max_config_bytes}",
            )
        ]
    return []


def _long_strings(data: Any, limit: int, where: str = "") -> list[str]:
    if isinstance(data, str):
        return [where] if len(data) > limit else []
    if not isinstance(data, dict | list):
        return []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    found = []
    for name, value in items:
        key = f"{where}.{name}" if where else str(name)
        found += [key] if len(str(name)) > limit else _long_strings(value, limit, key)
    return found


def resolve_config(
    *,
    method: str,
    config: str | None,
    overrides: dict[str, Any],
    seed: int | None,
    has_validation: bool,
    limits: Limits | None = None,
    gpus: int | None = None,
) -> ResolvedConfig:
    """Build and check the job's run config; raises ``InvalidConfig``.

    The trainer's own validation (``trainer.config.parse_config``) runs here with the
    service's rules on top, so a config admitted here is one the worker runs. The data
    files are the job directory's (``train.jsonl``, and ``dev.jsonl`` when
    ``has_validation``). ``limits``
    (default: the defaults of ``core.settings.Limits``) bound its size and strings; with
    ``gpus`` 0 the arguments only a GPU runs (fp16, tf32) are refused.
    """
    try:
        data = _load_base(config, method)
    except ConfigError as exc:
        raise _refuse(exc.issues, {}) from exc
    cost = _cost_issues(data, limits or Limits())  # before anything walks an alias bomb
    if cost:
        raise _refuse(cost, {})
    issues = _apply_overrides(data, overrides)
    cost = _cost_issues(data, limits or Limits())
    if cost:  # the base alone was fine: the overrides made it so
        refusal = _refuse(cost, overrides)
        refusal.param = refusal.param if refusal.param != "config" else "overrides"
        raise refusal
    if data.pop("trust_remote_code", None) is not None:
        issues.append(ConfigIssue("trust_remote_code", TRUST_REMOTE_CODE))
    args = data.get("training_args")
    if isinstance(args, dict):
        issues += _check_seed(args, seed, overrides) + _service_rules(args)
        if gpus == 0:
            issues += [
                ConfigIssue(f"training_args.{k}", "needs a GPU; the job has gpus 0")
                for k in GPU_ONLY_ARGS
                if args.get(k)
            ]
    data = run_config(data, has_validation=has_validation)
    try:
        parsed = parse_config(data)
    except ConfigError as exc:
        raise _refuse(exc.issues + issues, overrides) from exc
    if parsed.method != method:
        peft = parsed.peft_config["peft_type"] if parsed.peft_config else "none (full fine-tune)"
        issues.append(
            ConfigIssue(
                "method",
                f"method is {method!r} but the config is a {parsed.method!r} config "
                f"(peft_config.peft_type: {peft})",
            )
        )
    if issues:
        raise _refuse(issues, overrides)
    max_steps = parsed.training_args.get("max_steps")
    steps = max_steps if isinstance(max_steps, int) and max_steps > 0 else None
    return ResolvedConfig(parsed.model_dump(mode="json"), steps)
