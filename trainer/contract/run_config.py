"""The resolved run config: what admission stores on the job and the trainer reads unchanged.

It is the upstream-style config (``trainer.config.FinetuningConfig`` dumped to a dict) in the
job directory's terms: ``data_config`` names the files of ``data/`` (``train.jsonl``, and
``dev.jsonl`` when the job has a validation split), ``training_args.output_dir`` is absent (the
trainer is given ``output/``), and ``training_args.deepspeed``, if set, is the name of one of
the shipped DeepSpeed configs (:data:`SHIPPED_DEEPSPEED`), which the trainer finds in its own
install. The API produces it at admission; the worker writes it to ``config.yaml`` verbatim.
Nothing in it is a server path, so it is also what callers are shown.
"""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path
from typing import Any

from trainer.contract.layout import TRAIN_FILE, VALIDATION_FILE

#: where the shipped configs live (the repository's ``configs/``, beside the packages)
SHIPPED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: DeepSpeed configs a job may name, by file name (in :data:`SHIPPED_CONFIGS`)
SHIPPED_DEEPSPEED = ("ds_zero_2.json", "ds_zero_3.json", "ds_zero_3_offload.json")


def shipped_deepspeed_name(value: str) -> str | None:
    """The shipped DeepSpeed config ``value`` names (``ds_zero_3.json`` or
    ``configs/ds_zero_3.json``), or None when it names anything else."""
    name = posixpath.basename(value)
    if name in SHIPPED_DEEPSPEED and value in (name, f"configs/{name}"):
        return name
    return None


def shipped_deepspeed(name: str) -> Path:
    """The file of a shipped DeepSpeed config; raises ``KeyError`` for any other name."""
    if name not in SHIPPED_DEEPSPEED:
        shipped = ", ".join(SHIPPED_DEEPSPEED)
        raise KeyError(f"{name!r} is not a shipped DeepSpeed config ({shipped})")
    return SHIPPED_CONFIGS / name


def run_config(config: dict[str, Any], *, has_validation: bool) -> dict[str, Any]:
    """``config`` in the run contract's form: data files of ``data/``, no output directory,
    a shipped DeepSpeed config by name (a value naming none is left for validation to refuse).
    """
    resolved = copy.deepcopy(config)
    given = resolved.get("data_config")
    resolved["data_config"] = {
        **(given if isinstance(given, dict) else {}),
        "train_file": TRAIN_FILE,
        "val_file": VALIDATION_FILE if has_validation else None,
        "test_file": None,
    }
    args = resolved.get("training_args")
    if isinstance(args, dict):
        args.pop("output_dir", None)  # the trainer is given the job directory's output/
        deepspeed = args.get("deepspeed")
        name = shipped_deepspeed_name(str(deepspeed)) if deepspeed is not None else None
        if name is not None:
            args["deepspeed"] = name
    return resolved
