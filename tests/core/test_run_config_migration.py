"""Migration 0008: jobs stored before the run contract get the run config the worker now writes
verbatim, so a queued, paused or failed job of before runs (and resumes) unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session, create_engine, select

from core.db import upgrade
from core.models import Dataset, Job
from tests.trainer.finetune_helpers import tiny_config
from trainer.config import parse_config
from trainer.contract.run_config import run_config


def _dataset(session: Session, path: Path) -> Dataset:
    dataset = Dataset(
        tenant_id="t", filename=path.name, path=str(path), bytes=1, sha256="0" * 64, valid=True
    )
    session.add(dataset)
    session.commit()
    return dataset


def _job(session: Session, config: dict[str, Any], train: Dataset, val: Dataset | None) -> str:
    job = Job(
        tenant_id="t",
        state="queued",
        model="m",
        method="sft",
        training_dataset_id=train.id,
        validation_dataset_id=val.id if val else None,
        config=config,
    )
    session.add(job)
    session.commit()
    return job.id


def test_stored_configs_become_run_configs(tmp_path: Path) -> None:
    # given a store at 0007 holding jobs in the earlier form: uploaded file names, the
    # upstream DeepSpeed path, an output directory; one job trains on an archive with dev.jsonl
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url, "0007")
    archive = tmp_path / "datasets" / "ds-a" / "files"
    archive.mkdir(parents=True)
    (archive / "train.jsonl").write_text("{}\n")
    (archive / "dev.jsonl").write_text("{}\n")
    old = tiny_config(
        "sft",
        data_config={"train_file": "mine.jsonl", "val_file": "my-dev.jsonl"},
        training_args={"deepspeed": "configs/ds_zero_3.json", "output_dir": "out"},
    )
    engine = create_engine(url)
    with Session(engine) as session:
        upload = _dataset(session, tmp_path / "mine.jsonl")
        dev = _dataset(session, tmp_path / "my-dev.jsonl")
        packed = _dataset(session, archive / "train.jsonl")
        with_dev = _job(session, old, upload, dev)
        without_dev = _job(session, {**old, "data_config": {"train_file": "x"}}, upload, None)
        from_archive = _job(session, old, packed, None)
    # when the store is migrated
    upgrade(url)
    # then every config is the run config, which the trainer parses as it is
    with Session(engine) as session:
        configs = {job.id: job.config for job in session.exec(select(Job)).all()}
    assert configs[with_dev] == run_config(old, has_validation=True)
    assert configs[with_dev]["training_args"]["deepspeed"] == "ds_zero_3.json"
    assert configs[without_dev]["data_config"]["val_file"] is None
    assert configs[from_archive]["data_config"]["val_file"] == "dev.jsonl"
    for config in configs.values():
        assert run_config(config, has_validation=bool(config["data_config"]["val_file"])) == config
        parse_config(config)
    engine.dispose()
