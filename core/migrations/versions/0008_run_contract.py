"""jobs.config in the run contract's form; no job is "validating"

A job's stored config becomes the run config the worker writes verbatim (trainer.contract.
run_config): data_config names the job directory's train.jsonl (and dev.jsonl when the job has
a validation split: a validation dataset, or an archive carrying dev.jsonl), without
training_args.output_dir, with a shipped DeepSpeed config by file name. Earlier rows named the
uploaded files and "configs/ds_zero_N.json", which the worker rewrote at every attempt.
No code path ever stored the "validating" state; a row in it would be queued.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 06:30:00
"""

import copy
import os
import posixpath
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SHIPPED_DEEPSPEED = ("ds_zero_2.json", "ds_zero_3.json", "ds_zero_3_offload.json")


def _has_validation(validation_id: str | None, train_path: str | None) -> bool:
    if validation_id is not None:
        return True
    if not train_path:
        return False
    folder, name = os.path.split(train_path)
    is_archive = os.path.basename(folder) == "files" and name == "train.jsonl"
    return is_archive and os.path.isfile(os.path.join(folder, "dev.jsonl"))


def _run_config(config: dict[str, Any], has_validation: bool) -> dict[str, Any]:
    resolved = copy.deepcopy(config)
    given = resolved.get("data_config")
    resolved["data_config"] = {
        **(given if isinstance(given, dict) else {}),
        "train_file": "train.jsonl",
        "val_file": "dev.jsonl" if has_validation else None,
        "test_file": None,
    }
    args = resolved.get("training_args")
    if isinstance(args, dict):
        args.pop("output_dir", None)
        deepspeed = args.get("deepspeed")
        if deepspeed is not None and posixpath.basename(str(deepspeed)) in _SHIPPED_DEEPSPEED:
            args["deepspeed"] = posixpath.basename(str(deepspeed))
    return resolved


def upgrade() -> None:
    bind = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("state", sa.String),
        sa.column("config", sa.JSON),
        sa.column("training_dataset_id", sa.String),
        sa.column("validation_dataset_id", sa.String),
    )
    datasets = sa.table("datasets", sa.column("id", sa.String), sa.column("path", sa.String))
    rows = bind.execute(
        sa.select(jobs.c.id, jobs.c.config, jobs.c.validation_dataset_id, datasets.c.path).join(
            datasets, datasets.c.id == jobs.c.training_dataset_id, isouter=True
        )
    ).all()
    for job_id, config, validation_id, train_path in rows:
        if not isinstance(config, dict):
            continue
        updated = _run_config(config, _has_validation(validation_id, train_path))
        if updated != config:
            bind.execute(sa.update(jobs).where(jobs.c.id == job_id).values(config=updated))
    bind.execute(sa.update(jobs).where(jobs.c.state == "validating").values(state="queued"))


def downgrade() -> None:
    # the run form is one the earlier worker also runs (it rewrote data files and DeepSpeed
    # paths itself, finding a shipped DeepSpeed config by file name)
    pass
