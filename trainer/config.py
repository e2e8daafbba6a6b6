"""Fine-tuning configs: the upstream demo's yaml files, loaded unchanged, validated strictly.

The schema is the demo's ``FinetuningConfig`` (glm4-reference.md §1.2, §2). YAML is read as
YAML 1.2, as upstream's ruamel loader does, so ``learning_rate: 5e-4`` is a float. Every problem
is reported with the dotted key it concerns: an unknown key, a wrong type, a missing required key.
Importing this module never imports torch: ``training_args`` and ``peft_config`` keys are
checked against tables generated from the pinned transformers/peft (``trainer.hf_fields``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from trainer import config_rules, hf_fields
from trainer.contract.run_config import SHIPPED_DEEPSPEED, shipped_deepspeed

Method = Literal["lora", "ptuning_v2", "sft"]
_PEFT_TABLES = {"LORA": "lora", "PREFIX_TUNING": "prefix_tuning"}
_METHODS: dict[str | None, Method] = {None: "sft", "LORA": "lora", "PREFIX_TUNING": "ptuning_v2"}
# Keys the trainer owns: setting them in a config would break the run's contract with the worker.
_RESERVED_TRAINING_ARGS = frozenset({"use_cpu", "local_rank"})
# ``report_to`` values: progress always goes to events.jsonl; TensorBoard logs may go beside it
# (under the output directory), nothing leaves the machine
REPORT_TO = ("none", "tensorboard")
# HF's own whole-model compile: each of these turns it on.
_HF_COMPILE_ARGS = ("torch_compile", "torch_compile_backend", "torch_compile_mode")


@dataclass(frozen=True)
class ConfigIssue:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(ValueError):
    """A config that cannot be used; ``issues`` lists every problem with its key."""

    def __init__(self, issues: list[ConfigIssue], source: str = "config") -> None:
        self.issues = issues
        self.source = source
        super().__init__(f"{source}: " + "; ".join(str(i) for i in issues))


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    train_file: str | None = None
    val_file: str | None = None
    test_file: str | None = None
    num_proc: int | None = None


class FinetuningConfig(BaseModel):
    """One fine-tuning run's settings, as in the upstream yaml files."""

    model_config = ConfigDict(extra="forbid", strict=True)

    data_config: DataConfig
    max_input_length: int
    max_output_length: int
    combine: bool
    freezeV: bool  # noqa: N815 - upstream key name; unused by text models, kept for compatibility
    training_args: dict[str, Any] = {"output_dir": "./output"}
    peft_config: dict[str, Any] | None = None
    swanlab: str | None = None  # upstream HEAD key; accepted and ignored (no telemetry here)
    # glmft: train on each batch's conversations concatenated into one row, no padding, with
    # position ids restarting per conversation so attention stays inside each (same loss);
    # with P-Tuning v2 each conversation also attends to the prefix (trainer.attention)
    packing: bool = False
    # glmft: compute the loss without the full (tokens x 151k) logits: only target positions, a
    # chunk at a time, recomputed in the backward pass (same loss, far less memory)
    chunked_loss: bool = False
    # glmft: the GPU memory (GiB) a rank may use; host embeddings, gradient checkpointing,
    # smaller loss chunks, then micro-batches are taken only when the estimated peak of the
    # largest batch would not fit without them (trainer.memory)
    memory_budget_gib: float | None = None
    # glmft: torch.compile each decoder layer's training forward (trainer.compile): inductor fuses
    # the elementwise work around the matrix products; one graph serves every layer (same loss).
    # Under DeepSpeed ZeRO-3 it compiles the layers' RMSNorm, SwiGLU and RoPE instead
    compile: bool = False
    # glmft: generate the eval answers (predict_with_generate) with the serving engine: the whole
    # eval set continuously batched (trainer.generation); false keeps transformers' generate,
    # one eval batch at a time. Several ranks and DeepSpeed always use transformers' path
    eval_engine: bool = True

    @property
    def method(self) -> Method:
        peft_type = None if self.peft_config is None else str(self.peft_config["peft_type"])
        return _METHODS[peft_type]

    @property
    def max_length(self) -> int:
        """Training sequence cap: ``max_input_length + max_output_length + 1`` (upstream)."""
        return self.max_input_length + self.max_output_length + 1

    @property
    def generation_config(self) -> dict[str, Any]:
        value = self.training_args.get("generation_config") or {"max_new_tokens": 512}
        return dict(value)

    @property
    def batch_size(self) -> int:
        """Conversations per device and step (HF's default 8 when unset)."""
        return int(self.training_args.get("per_device_train_batch_size", 8))

    @property
    def accumulation_steps(self) -> int:
        return int(self.training_args.get("gradient_accumulation_steps", 1))

    def hf_training_args(self) -> dict[str, Any]:
        """``training_args`` without the keys that are not TrainingArguments fields."""
        return {k: v for k, v in self.training_args.items() if k != "generation_config"}


def load_yaml(text: str, source: str = "config") -> Any:
    yaml = YAML(typ="safe", pure=True)
    try:
        return yaml.load(io.StringIO(text))
    except YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"not valid YAML: {exc}")], source) from exc
    except RecursionError as exc:  # ruamel composes nested nodes recursively
        raise ConfigError([ConfigIssue("", "the YAML is nested too deeply")], source) from exc


def load_config(path: str | Path) -> FinetuningConfig:
    """Read and validate a config file; raises ``ConfigError`` (or ``OSError`` if unreadable)."""
    path = Path(path)
    return parse_config(load_yaml(path.read_text(encoding="utf-8"), str(path)), source=str(path))


def parse_config(data: Any, source: str = "config") -> FinetuningConfig:
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "a config must be a mapping of keys")], source)
    shape = config_rules.check_shape(data)
    if shape:  # the other checks walk the document: refuse a cycle or a tower first
        raise ConfigError([ConfigIssue(k, m) for k, m in shape], source)
    issues = [ConfigIssue(k, m) for k, m in config_rules.check_numbers(data)]
    config: FinetuningConfig | None = None
    try:
        config = FinetuningConfig.model_validate(data)
    except ValidationError as exc:
        issues += [_issue(e) for e in exc.errors()]
    if isinstance(data.get("training_args"), dict):
        issues += _check_training_args(data["training_args"])
    if isinstance(data.get("peft_config"), dict):
        issues += _check_peft(data["peft_config"])
    if config is not None:
        issues += _check_lengths(config)
        issues += _check_memory_budget(config)
        issues += _check_compile(config)
        if config.peft_config is not None and "peft_type" in config.peft_config:
            config.peft_config["peft_type"] = str(config.peft_config["peft_type"]).upper()
    if issues or config is None:
        raise ConfigError(issues, source)
    return config


def _issue(error: Any) -> ConfigIssue:
    key = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "missing":
        return ConfigIssue(key, "required key is missing")
    if kind == "extra_forbidden":
        return ConfigIssue(key, "unknown key")
    return ConfigIssue(key, f"{error['msg'].lower()} (got {error.get('input')!r})")


def _check_lengths(config: FinetuningConfig) -> list[ConfigIssue]:
    return [
        ConfigIssue(key, "must be a positive integer")
        for key in ("max_input_length", "max_output_length")
        if getattr(config, key) <= 0
    ]


def _check_memory_budget(config: FinetuningConfig) -> list[ConfigIssue]:
    budget = config.memory_budget_gib
    if budget is None:
        return []
    if budget <= 0:
        return [ConfigIssue("memory_budget_gib", "must be positive")]
    if {"gradient_checkpointing", "activation_checkpointing"} & set(config.training_args):
        return [
            ConfigIssue(
                "memory_budget_gib",
                "chooses gradient checkpointing itself; remove training_args."
                "gradient_checkpointing (activation_checkpointing) or the budget",
            )
        ]
    return []


def _check_compile(config: FinetuningConfig) -> list[ConfigIssue]:
    if not config.compile:
        return []
    if any(config.training_args.get(k) for k in _HF_COMPILE_ARGS):
        return [
            ConfigIssue(
                "compile",
                "compiles the decoder layers; training_args.torch_compile compiles the whole "
                "model on top: set only one of them",
            )
        ]
    return []


def _check_fields(values: dict[str, Any], table: str, prefix: str) -> list[ConfigIssue]:
    fields = hf_fields.load()[table]
    issues: list[ConfigIssue] = []
    for key, value in values.items():
        spec = fields.get(key)
        if spec is None:
            issues.append(ConfigIssue(f"{prefix}.{key}", "unknown key"))
        elif not hf_fields.kind_matches(value, spec["kinds"], spec["optional"]):
            expected = " or ".join(spec["kinds"])
            issues.append(
                ConfigIssue(
                    f"{prefix}.{key}", f"expected {expected}, got {type(value).__name__} {value!r}"
                )
            )
        elif value is not None and spec.get("choices") and str(value) not in spec["choices"]:
            shown = ", ".join(spec["choices"])
            issues.append(ConfigIssue(f"{prefix}.{key}", f"must be one of {shown}; got {value!r}"))
    return issues


def _check_training_args(args: dict[str, Any]) -> list[ConfigIssue]:
    issues = [
        ConfigIssue(f"training_args.{k}", "is set by glmft and cannot be configured")
        for k in args
        if k in _RESERVED_TRAINING_ARGS
    ]
    issues += _check_report_to(args.get("report_to"))
    rest = {
        k: v
        for k, v in args.items()
        if k not in _RESERVED_TRAINING_ARGS and k not in ("generation_config", "report_to")
    }
    issues += _check_fields(rest, "training_args", "training_args")
    issues += [
        ConfigIssue(f"training_args.{k}", m) for k, m in config_rules.check_training_args(args)
    ]
    generation = args.get("generation_config")
    if generation is not None and not isinstance(generation, dict):
        issues.append(ConfigIssue("training_args.generation_config", "must be a mapping"))
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "logging_steps"):
        value = args.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            issues.append(ConfigIssue(f"training_args.{key}", "must be positive"))
    return issues


def report_targets(value: Any) -> list[str]:
    """``report_to`` as a list of integrations (``none`` and missing: none)."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in values if v != "none"]


def _check_report_to(value: Any) -> list[ConfigIssue]:
    if value is None:
        return []
    if not isinstance(value, str | list) or not all(isinstance(v, str) for v in value):
        return [
            ConfigIssue(
                "training_args.report_to", f"expected a string or list of strings, got {value!r}"
            )
        ]
    unknown = [v for v in report_targets(value) if v not in REPORT_TO]
    if unknown:
        return [
            ConfigIssue(
                "training_args.report_to",
                f"{', '.join(map(repr, unknown))} is not supported: glmft reports to the job's "
                f"events; set one of {', '.join(REPORT_TO)}",
            )
        ]
    return []


def _check_peft(peft: dict[str, Any] | None) -> list[ConfigIssue]:
    if peft is None:
        return []
    peft_type = peft.get("peft_type")
    if peft_type is None:
        return [ConfigIssue("peft_config.peft_type", "required key is missing")]
    table = _PEFT_TABLES.get(str(peft_type).upper())
    if table is None:
        allowed = ", ".join(_PEFT_TABLES)
        return [
            ConfigIssue("peft_config.peft_type", f"must be one of {allowed}, got {peft_type!r}")
        ]
    rest = {k: v for k, v in peft.items() if k != "peft_type"}
    issues = _check_fields(rest, table, "peft_config")
    task = peft.get("task_type", "CAUSAL_LM")
    if str(task).upper() != "CAUSAL_LM":
        issues.append(ConfigIssue("peft_config.task_type", f"must be CAUSAL_LM, got {task!r}"))
    return issues


def resolve_config_path(value: str, config_path: Path | None) -> Path:
    """Find a file a config names (``training_args.deepspeed``): a shipped DeepSpeed config by
    name (a run config's form, ``trainer.contract.run_config``), else as given (relative to the
    working directory, as upstream), then next to the config file, then in its parent."""
    if value in SHIPPED_DEEPSPEED:
        return shipped_deepspeed(value)
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    places = [Path.cwd()]
    if config_path is not None:
        places += [config_path.parent, config_path.parent.parent]
    for base in places:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    for base in places[1:]:  # "configs/ds_zero_3.json" given from a config inside configs/
        if (base / candidate.name).is_file():
            return (base / candidate.name).resolve()
    raise ConfigError([ConfigIssue("training_args.deepspeed", f"file not found: {value}")])
