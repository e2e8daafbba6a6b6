"""Keys and value kinds of the Hugging Face dataclasses a config may set, without importing them.

``trainer.config`` validates ``training_args`` and ``peft_config`` against these tables so the API
can reject an unknown key or a wrong type before any GPU time is spent, without importing torch. The
tables are generated from the pinned transformers/peft (``python -m trainer.hf_fields``) and a test
checks they still match the installed versions.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from enum import Enum
from functools import cache
from importlib import resources
from typing import Any, Literal

Kind = Literal["bool", "int", "float", "str", "list", "dict", "any"]
_ASSET = "hf_fields.json"


@cache
def load() -> dict[str, dict[str, dict[str, Any]]]:
    """``{"training_args"|"lora"|"prefix_tuning": {key: {"kinds": [...], "optional": bool}}}``;
    an enumerated field (``eval_strategy``, ``optim``, ...) also has its ``choices``."""
    text = resources.files("trainer").joinpath("assets", _ASSET).read_text(encoding="utf-8")
    data: dict[str, dict[str, dict[str, Any]]] = json.loads(text)
    return data


def kind_matches(value: object, kinds: list[str], optional: bool) -> bool:
    if value is None:
        return optional or "any" in kinds
    checks: dict[str, bool] = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, list),
        "dict": isinstance(value, dict),
        "any": True,
    }
    return any(checks[k] for k in kinds)


def choices_of(annotation: Any, metadata: Any = None) -> list[str] | None:
    """The values an enumerated field accepts, or ``None``. ``IntervalStrategy | str`` is
    enumerated too: Hugging Face converts the string to the enum (a ValueError for any other)."""
    if metadata and metadata.get("choices"):
        return sorted(str(c) for c in metadata["choices"])
    enums: set[str] = set()
    literals: set[str] = set()
    free_str = False
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, Enum):
            enums |= {str(member.value) for member in arg}
        elif typing.get_origin(arg) is Literal and all(
            isinstance(v, str) for v in typing.get_args(arg)
        ):
            literals |= set(typing.get_args(arg))
        elif arg is str:
            free_str = True
        elif arg is not type(None):
            return None  # also takes another kind of value (a bool, a list, a dict...)
    if free_str and (literals or not enums):
        return None  # a Literal beside str is a suggestion, not a rule
    return sorted(enums | literals) or None


def _kinds(annotation: Any) -> tuple[list[str], bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: list[str] = []
        optional = False
        for arg in typing.get_args(annotation):
            if arg is type(None):
                optional = True
                continue
            sub, sub_optional = _kinds(arg)
            optional = optional or sub_optional
            kinds += [k for k in sub if k not in kinds]
        return kinds, optional
    if origin is Literal:
        return sorted({_scalar_kind(type(a)) for a in typing.get_args(annotation)}), False
    if origin in (list, tuple, set, typing.Sequence):
        return ["list"], False
    if origin is dict:
        return ["dict"], False
    return [_scalar_kind(annotation)], False


def _scalar_kind(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "str"
    table = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    return table.get(tp, "any")


def _fields(cls: type) -> dict[str, dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    out: dict[str, dict[str, Any]] = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.name.startswith("_"):
            continue
        kinds, optional = _kinds(hints.get(field.name, Any))
        if "float" in kinds and "int" not in kinds:
            kinds = [*kinds, "int"]  # 1 is a fine learning rate
        out[field.name] = {"kinds": sorted(kinds), "optional": optional}
        choices = choices_of(hints.get(field.name, Any), field.metadata)
        if choices:
            out[field.name]["choices"] = choices
    return out


def generate() -> dict[str, dict[str, dict[str, Any]]]:
    """Build the tables from the installed transformers and peft (imports torch)."""
    from peft import LoraConfig, PrefixTuningConfig
    from transformers import Seq2SeqTrainingArguments

    return {
        "training_args": _fields(Seq2SeqTrainingArguments),
        "lora": _fields(LoraConfig),
        "prefix_tuning": _fields(PrefixTuningConfig),
    }


if __name__ == "__main__":
    json.dump(generate(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
