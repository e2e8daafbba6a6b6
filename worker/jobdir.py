"""Fill a job directory (``trainer.contract.layout``) for one attempt: data and run config.

The config is the job's stored run config (``trainer.contract.run_config``), written verbatim:
admission already put it in the job directory's terms.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from core.datasets import is_archive_dataset as is_archive_dataset
from trainer.contract.layout import TRAIN_FILE, VALIDATION_FILE, JobDir


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
        _copy(train_file, job_dir.data / TRAIN_FILE)
        if validation_file is not None:
            _copy(validation_file, job_dir.data / VALIDATION_FILE)
    partial = job_dir.config.with_name(job_dir.config.name + ".partial")
    with partial.open("w", encoding="utf-8") as fh:
        YAML(typ="safe", pure=True).dump(config, fh)
    os.replace(partial, job_dir.config)


def _copy(source: Path, target: Path) -> None:
    """Copy by rename: a trainer of an earlier attempt that still reads the file (it waits
    for the lock meanwhile) never sees it half written."""
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)
