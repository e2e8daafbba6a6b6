"""The job directory an attempt runs in: the datasets and the run config, written verbatim."""

from __future__ import annotations

import json
from pathlib import Path

from ruamel.yaml import YAML

from tests.trainer.finetune_helpers import tiny_config
from trainer.config import load_config, resolve_config_path
from trainer.contract.layout import JobDir
from trainer.contract.run_config import run_config, shipped_deepspeed
from worker.jobdir import prepare


def test_prepare_writes_the_run_config_verbatim_and_the_trainer_accepts_it(tmp_path: Path) -> None:
    # given an uploaded dataset and a run config naming a shipped DeepSpeed config
    train = tmp_path / "upload.jsonl"
    train.write_text(json.dumps({"messages": []}) + "\n")
    config = run_config(
        tiny_config(
            "sft", training_args={"deepspeed": "configs/ds_zero_3.json", "output_dir": "elsewhere"}
        ),
        has_validation=False,
    )
    directory = JobDir.for_job(tmp_path / "artifacts", "job-1")
    # when the worker prepares the attempt
    prepare(directory, config=config, train_file=train, validation_file=None)
    # then config.yaml is the run config as stored, in the job directory's terms
    written = YAML(typ="safe", pure=True).load(directory.config)
    assert written == config
    assert written["data_config"] == {
        "train_file": "train.jsonl",
        "val_file": None,
        "test_file": None,
        "num_proc": 1,
    }
    assert "output_dir" not in written["training_args"]
    assert written["training_args"]["deepspeed"] == "ds_zero_3.json"
    # and the trainer finds the shipped DeepSpeed file and its data by those names
    deepspeed = resolve_config_path("ds_zero_3.json", directory.config)
    assert deepspeed == shipped_deepspeed("ds_zero_3.json")
    assert json.loads(deepspeed.read_text())["zero_optimization"]["stage"] == 3
    assert (directory.data / "train.jsonl").read_text() == train.read_text()
    assert load_config(directory.config).method == "sft"
