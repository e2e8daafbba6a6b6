"""``report_to: tensorboard``: TensorBoard logs beside the events, under the output directory;
a clear input error where no TensorBoard writer is installed; other integrations refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.trainer.finetune_helpers import (
    final_status,
    glmft_in_process,
    train_only_config,
    write_data,
)
from trainer.config import ConfigError, parse_config
from trainer.contract.events import read_events

HI = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def _finetune(
    capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path, report_to: str
) -> tuple[int, Path]:
    data = write_data(tmp_path / "data", [HI, HI])
    config = train_only_config("lora", 2)
    config["training_args"]["report_to"] = report_to
    config_path = tmp_path / "config.yaml"
    YAML(typ="safe", pure=True).dump(config, config_path)
    output = tmp_path / "out"
    args = ("finetune", str(data), str(model_dir), str(config_path), "--output-dir", str(output))
    return glmft_in_process(capsys, *args).returncode, output


def test_tensorboard_logs_go_under_the_output_directory(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = _finetune(capsys, tiny_model_dir, tmp_path, "tensorboard")
    assert code == 0 and final_status(read_events(output))["status"] == "succeeded"
    logs = list((output / "runs").rglob("events.out.tfevents.*"))
    assert logs and all(f.stat().st_size > 0 for f in logs)


def test_without_a_tensorboard_writer_the_run_fails_as_an_input_error(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for package in ("tensorboard", "tensorboardX"):  # as if neither were installed
        monkeypatch.setitem(sys.modules, package, None)
    code, output = _finetune(capsys, tiny_model_dir, tmp_path, "tensorboard")
    status = final_status(read_events(output))
    assert code == 2 and status["code"] == "invalid_config"
    assert "tensorboard needs the tensorboardX package" in status["message"]
    assert not any(e["event"] == "step" for e in read_events(output))


def test_other_integrations_are_refused_by_name() -> None:
    config = train_only_config("lora", 2)
    config["training_args"]["report_to"] = ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="'wandb' is not supported"):
        parse_config(config)
    config["training_args"]["report_to"] = "none"
    assert parse_config(config).training_args["report_to"] == "none"
