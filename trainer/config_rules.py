"""Rules on a config's values that the trainer and the service both apply, without torch.

``trainer.config.parse_config`` runs them, so a config the API admits is one the trainer runs:

- the shape of the document: no cycles (a recursive YAML alias), at most ``MAX_DEPTH`` levels,
  measured without expanding shared (aliased) parts (:func:`measure`);
- every number finite, every integer within 32 bits (the SQL columns and counters it reaches);
- the checks Hugging Face's ``TrainingArguments`` makes when it is built (enumerated values,
  whole step counts, matching strategies...), so they fail at admission, not on a GPU node;
- what one run may cost: checkpoint saves and logged steps it plans, ``save_total_limit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
MAX_DEPTH = 32
#: checkpoints one run may plan to save (max_steps / save_steps)
MAX_CHECKPOINT_SAVES = 5000
#: step events one run may plan to log (max_steps / logging_steps)
MAX_LOGGED_STEPS = 100_000
#: checkpoints kept on disk when the config does not say (older ones are rotated away)
DEFAULT_SAVE_TOTAL_LIMIT = 5
#: Hugging Face's defaults for the keys these rules read
_HF_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "save_strategy": "steps",
    "save_steps": 500,
    "eval_strategy": "no",
    "eval_steps": None,
    "logging_strategy": "steps",
    "logging_steps": 500,
    "lr_scheduler_type": "linear",
    "dataloader_num_workers": 0,
}
_NON_NEGATIVE = ("learning_rate", "warmup_steps", "weight_decay", "max_grad_norm")
_POSITIVE = ("gradient_accumulation_steps", "num_train_epochs", "save_steps", "eval_steps")


@dataclass
class Shape:
    """What a document would be expanded: JSON-ish ``size`` in bytes, ``longest`` string,
    ``depth`` of nesting, and whether it holds a ``cycle``."""

    size: int = 0
    longest: int = 0
    depth: int = 0
    cycle: bool = False
    _seen: dict[int, tuple[int, int, int]] = field(default_factory=dict, repr=False)
    _towering: bool = field(default=False, repr=False)


def measure(data: Any) -> Shape:
    """The expanded shape of ``data`` in time linear in its *distinct* nodes: a YAML alias
    bomb (a few hundred bytes that expand to gigabytes) is measured, never expanded. Below
    ``MAX_DEPTH`` levels it stops descending (``depth`` is then ``MAX_DEPTH + 1``)."""
    shape = Shape()
    size, longest, depth = _measure(data, shape, set(), 0)
    shape.size, shape.longest, shape.depth = size, longest, depth
    if shape._towering:
        shape.depth = max(depth, MAX_DEPTH + 1)
    return shape


def _measure(node: Any, shape: Shape, visiting: set[int], level: int) -> tuple[int, int, int]:
    if isinstance(node, str):
        return len(node.encode("utf-8", "surrogatepass")) + 2, len(node), 0
    if not isinstance(node, dict | list):
        return len(repr(node)), 0, 0
    if level > MAX_DEPTH:  # refused anyway: never recurse towards the interpreter's limit
        shape._towering = True
        return 0, 0, 1
    key = id(node)
    if key in shape._seen:
        return shape._seen[key]
    if key in visiting:
        shape.cycle = True
        return 0, 0, 0
    visiting.add(key)
    size, longest, depth = 2, 0, 0
    children = node.items() if isinstance(node, dict) else ((None, v) for v in node)
    for name, value in children:
        if shape.cycle:
            break
        child_size, child_longest, child_depth = _measure(value, shape, visiting, level + 1)
        size += child_size + 1
        longest = max(longest, child_longest)
        depth = max(depth, child_depth)
        if name is not None:
            size += len(str(name)) + 3
            longest = max(longest, len(str(name)))
    visiting.discard(key)
    shape._seen[key] = (size, longest, depth + 1)
    return size, longest, depth + 1


def check_shape(data: Any) -> list[tuple[str, str]]:
    """``(key, message)`` for a cyclic or too deeply nested document (checked first: the other
    rules walk it)."""
    shape = measure(data)
    if shape.cycle:
        return [("", "the config refers to itself (a recursive YAML alias)")]
    if shape.depth > MAX_DEPTH:
        return [("", f"the config is nested {shape.depth} levels deep; at most {MAX_DEPTH}")]
    return []


def check_numbers(node: Any, key: str = "") -> list[tuple[str, str]]:
    """Every float finite, every integer within 32 bits (shared parts visited once)."""
    issues: list[tuple[str, str]] = []
    seen: set[int] = set()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, float) and not math.isfinite(value):
            issues.append((where, f"must be a finite number, got {value!r}"))
        elif isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            issues.append((where, f"{value} is out of range ({INT_MIN}..{INT_MAX})"))
        elif isinstance(value, dict | list) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for name, child in items:
                walk(child, f"{where}.{name}" if where else str(name))

    walk(node, key)
    return issues


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_training_args(args: dict[str, Any]) -> list[tuple[str, str]]:
    """Hugging Face's own ``TrainingArguments`` checks that need no hardware, and the costs
    one run may plan; keys are relative to ``training_args``."""
    values = {**_HF_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    issues: list[tuple[str, str]] = []
    for key in _NON_NEGATIVE:
        number = _number(args.get(key))
        if number is not None and number < 0:
            issues.append((key, "must not be negative"))
    for key in _POSITIVE:
        number = _number(args.get(key))
        if number is not None and number <= 0:
            issues.append((key, "must be positive"))
    for key in ("seed", "data_seed"):
        number = _number(args.get(key))
        if number is not None and number < 0:  # numpy's seeds, which set_seed sets, are >= 0
            issues.append((key, "must not be negative"))
    max_steps = _number(values["max_steps"])
    if max_steps is not None and max_steps < -1:
        issues.append(("max_steps", "must be -1 (train num_train_epochs) or a step count"))
    issues += _step_rules(values)
    issues += _strategy_rules(values)
    return issues


def _step_rules(values: dict[str, Any]) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    for kind in ("logging", "eval", "save"):
        strategy, steps = values[f"{kind}_strategy"], _number(values[f"{kind}_steps"])
        if strategy != "steps" or steps is None:
            continue
        if steps == 0:
            issues.append((f"{kind}_steps", f"{kind}_strategy steps needs {kind}_steps > 0"))
        elif steps > 1 and not steps.is_integer():
            issues.append((f"{kind}_steps", "must be a whole number when it is above 1"))
    max_steps = _number(values["max_steps"]) or 0
    plans = (("save", MAX_CHECKPOINT_SAVES, "save"), ("logging", MAX_LOGGED_STEPS, "log"))
    for kind, limit, verb in plans:
        steps = _number(values[f"{kind}_steps"])
        if values[f"{kind}_strategy"] != "steps" or not steps or steps <= 0:
            continue
        planned = (1 / steps) if steps < 1 else (max_steps / steps if max_steps > 0 else 0)
        if planned > limit:
            issues.append(
                (
                    f"{kind}_steps",
                    f"would {verb} {int(planned)} times in one run (at most {limit}): "
                    f"raise {kind}_steps",
                )
            )
    kept = values.get("save_total_limit")
    if kept is not None and not (isinstance(kept, int) and 1 <= kept <= MAX_CHECKPOINT_SAVES):
        issues.append(("save_total_limit", f"must be between 1 and {MAX_CHECKPOINT_SAVES}"))
    return issues


def _strategy_rules(values: dict[str, Any]) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    if values.get("load_best_model_at_end") and values["save_strategy"] != "best":
        if values["eval_strategy"] != values["save_strategy"]:
            issues.append(("load_best_model_at_end", "needs eval_strategy equal to save_strategy"))
        else:
            save, every = _number(values["save_steps"]), _number(values["eval_steps"])
            every = every if every is not None else _number(values["logging_steps"])
            if values["eval_strategy"] == "steps" and save and every and save % every:
                issues.append(
                    ("load_best_model_at_end", "needs save_steps to be a multiple of eval_steps")
                )
    if values.get("fp16") and values.get("bf16"):
        issues.append(("fp16", "at most one of fp16 and bf16 can be true"))
    if values.get("fp16_full_eval") and values.get("bf16_full_eval"):
        issues.append(("fp16_full_eval", "at most one of fp16_full_eval and bf16_full_eval"))
    needs_eval = ("reduce_lr_on_plateau", "greedy")
    if values["lr_scheduler_type"] in needs_eval and values["eval_strategy"] == "no":
        issues.append(("lr_scheduler_type", f"{values['lr_scheduler_type']} needs evaluation"))
    if (
        values.get("dataloader_prefetch_factor") is not None
        and not values["dataloader_num_workers"]
    ):
        issues.append(("dataloader_prefetch_factor", "needs dataloader_num_workers > 0"))
    empty_cache = values.get("torch_empty_cache_steps")
    if empty_cache is not None and not (isinstance(empty_cache, int) and empty_cache > 0):
        issues.append(("torch_empty_cache_steps", "must be a positive integer"))
    return issues
