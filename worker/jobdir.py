"""The job directory: everything one training attempt reads and writes, under the artifact root.

<artifact_root>/jobs/<job_id>/
    data/train.jsonl, data/dev.jsonl   copies of the job's datasets (immutable inputs); for a
                                       dataset archive its whole tree (images beside the
                                       files that name them, by relative path), hard-linked
    config.yaml                        the resolved config the trainer runs
    output/                            events.jsonl and checkpoint-N/ (the trainer's)
    trainer.log                        the trainer's stdout and stderr
    trainer.lock                       held by the running trainer; one line per attempt that
                                       ran (trainer.fence): never two trainers at once
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from core.datasets import is_archive_dataset as is_archive_dataset

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class JobDir:
    root: Path

    @classmethod
    def for_job(cls, artifact_root: Path, job_id: str) -> JobDir:
        return cls(artifact_root / "jobs" / job_id)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def log(self) -> Path:
        return self.root / "trainer.log"

    @property
    def lock(self) -> Path:
        return self.root / "trainer.lock"

    def contains(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root.resolve())


def trainer_config(config: dict[str, Any], *, has_validation: bool) -> dict[str, Any]:
    """The job's config with the data files and output directory the job dir defines."""
    resolved = copy.deepcopy(config)
    resolved["data_config"] = {
        **resolved.get("data_config", {}),
        "train_file": "train.jsonl",
        "val_file": "dev.jsonl" if has_validation else None,
        "test_file": None,
    }
    training_args = resolved.setdefault("training_args", {})
    training_args.pop("output_dir", None)  # the worker passes --output-dir
    if not has_validation:
        training_args["eval_strategy"] = "no"
    return resolved


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # the dataset is immutable: share its bytes
    except OSError:
        shutil.copy2(source, target)


def prepare(
    job_dir: JobDir,
    *,
    config: dict[str, Any],
    train_file: Path,
    validation_file: Path | None,
    tree: Path | None = None,
) -> None:
    """Write the data and config of an attempt; checkpoints of earlier attempts are kept.

    ``tree`` (an unpacked dataset archive) is linked into ``data/`` whole, so the images keep
    their paths relative to the data files.
    """
    job_dir.data.mkdir(parents=True, exist_ok=True)
    job_dir.output.mkdir(parents=True, exist_ok=True)
    if tree is not None:  # an archive's tree holds its own train.jsonl and dev.jsonl
        shutil.rmtree(job_dir.data)
        shutil.copytree(tree, job_dir.data, copy_function=_link_or_copy)
    else:
        _copy(train_file, job_dir.data / "train.jsonl")
        if validation_file is not None:
            _copy(validation_file, job_dir.data / "dev.jsonl")
    resolved = trainer_config(config, has_validation=validation_file is not None)
    training_args = resolved["training_args"]
    if training_args.get("deepspeed"):  # one of the shipped files (the API checks), by name
        shipped = SHIPPED_CONFIGS / Path(str(training_args["deepspeed"])).name
        _copy(shipped, job_dir.root / shipped.name)
        training_args["deepspeed"] = str((job_dir.root / shipped.name).resolve())
    partial = job_dir.config.with_name(job_dir.config.name + ".partial")
    with partial.open("w", encoding="utf-8") as fh:
        YAML(typ="safe", pure=True).dump(resolved, fh)
    os.replace(partial, job_dir.config)


def _copy(source: Path, target: Path) -> None:
    """Copy by rename: a trainer of an earlier attempt that still reads the file (it waits
    for the lock meanwhile) never sees it half written."""
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
