"""The job directory an attempt runs in: data, config, the shipped DeepSpeed file."""

from __future__ import annotations

import json
from pathlib import Path

from ruamel.yaml import YAML

from tests.trainer.finetune_helpers import tiny_config
from trainer.config import load_config
from worker.jobdir import JobDir, prepare


def test_prepare_writes_a_config_the_trainer_accepts(tmp_path: Path) -> None:
    train = tmp_path / "upload.jsonl"
    train.write_text(json.dumps({"messages": []}) + "\n")
    config = tiny_config(
        "sft", training_args={"deepspeed": "configs/ds_zero_3.json", "output_dir": "elsewhere"}
    )
    directory = JobDir.for_job(tmp_path / "artifacts", "job-1")
    prepare(directory, config=config, train_file=train, validation_file=None)
    written = YAML(typ="safe", pure=True).load(directory.config)
    assert written["data_config"] == {
        "train_file": "train.jsonl",
        "val_file": None,
        "test_file": None,
        "num_proc": 1,
    }
    assert "output_dir" not in written["training_args"]
    assert written["training_args"]["eval_strategy"] == "no"
    deepspeed = Path(written["training_args"]["deepspeed"])
    assert deepspeed.is_absolute() and directory.contains(deepspeed)
    assert json.loads(deepspeed.read_text())["zero_optimization"]["stage"] == 3
    assert (directory.data / "train.jsonl").read_text() == train.read_text()
    assert load_config(directory.config).method == "sft"
