"""The run contract (trainer.contract): what the API admits is what the worker writes and the
trainer runs; the command line round-trips; every event the trainer writes parses back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from api.services.job_config import resolve_config
from tests.trainer.finetune_helpers import REPO, write_data
from tests.worker.test_launcher import CONVERSATIONS
from trainer.config import load_config
from trainer.contract.command import Resume, TrainerArgs, TrainerCommand
from trainer.contract.events import (
    CheckpointEvent,
    EvalEvent,
    StartedEvent,
    StatusEvent,
    StepEvent,
    UnknownEvent,
    parse_event,
)
from trainer.contract.layout import JobDir
from trainer.contract.run_config import SHIPPED_DEEPSPEED, run_config
from worker.events_tail import EventTail
from worker.jobdir import prepare


@pytest.mark.parametrize(
    "resume", [Resume.none(), Resume.latest(), Resume.step(1), Resume.step(500)]
)
def test_resume_renders_and_parses_back(resume: Resume) -> None:
    assert Resume.parse(resume.render()) == resume


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Resume.none()),
        ("no", Resume.none()),
        ("YES", Resume.latest()),
        ("500", Resume.step(500)),
        ("step:7", Resume.step(7)),
    ],
)
def test_resume_takes_the_upstream_demo_form_too(text: str, expected: Resume) -> None:
    assert Resume.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "step:0", "latest-ish", "step:x"])
def test_bad_resume_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="resume must be"):
        Resume.parse(text)


def test_a_step_resume_names_its_step() -> None:
    with pytest.raises(ValueError, match="names its step"):
        Resume(mode="step")


def test_trainer_args_render_and_parse_back(tmp_path: Path) -> None:
    # given every argument the worker sets
    args = TrainerArgs(
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "model",
        config_path=tmp_path / "config.yaml",
        resume=Resume.step(40),
        output_dir=tmp_path / "output",
        base_model_name="glm-4-9b-chat",
        feature_cache=tmp_path / "cache",
        lock=tmp_path / "trainer.lock",
        attempt=3,
        lock_wait_s=12.5,
        trust_remote_code=True,
    )
    # when the launch is rendered, then the trainer parses the same arguments back
    command = TrainerCommand(nproc=2, args=args).argv()
    assert command[command.index("trainer.finetune") + 1 :] == args.argv()
    assert TrainerArgs.parse(args.argv()) == args
    assert TrainerArgs.parse(TrainerArgs(**{**args.model_dump(), "lock": None}).argv()).lock is None


def test_the_trainer_takes_the_upstream_positional_resume_but_not_both() -> None:
    assert TrainerArgs.parse(["d", "m", "c.yaml", "yes"]).resume == Resume.latest()
    assert TrainerArgs.parse(["d", "m", "c.yaml"]).resume == Resume.none()
    with pytest.raises(SystemExit):
        TrainerArgs.parse(["d", "m", "c.yaml", "yes", "--resume", "none"])


def test_admission_produces_the_run_config_in_the_job_directorys_terms() -> None:
    # given a preset with a DeepSpeed config named as the upstream yaml does, and an output dir
    overrides = {
        "training_args.deepspeed": "configs/ds_zero_2.json",
        "training_args.output_dir": "out",
    }
    # when the API admits it
    resolved = resolve_config(
        method="lora", config="tiny/lora", overrides=overrides, seed=None, has_validation=True
    )
    # then data files are data/'s, the DeepSpeed config is a shipped name, no output dir
    config = resolved.config
    assert config["data_config"]["train_file"] == "train.jsonl"
    assert config["data_config"]["val_file"] == "dev.jsonl"
    assert config["training_args"]["deepspeed"] == "ds_zero_2.json" in SHIPPED_DEEPSPEED
    assert "output_dir" not in config["training_args"]
    # and it is a fixed point: nothing is left for the worker to reshape
    assert run_config(config, has_validation=True) == config


def test_what_the_api_admits_the_trainer_runs_and_the_worker_reads(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # given a config as the API admits it (no validation split: eval would need one)
    resolved = resolve_config(
        method="lora",
        config="tiny/lora",
        overrides={
            "training_args.max_steps": 2,
            "training_args.logging_steps": 1,
            "training_args.save_steps": 2,
            "training_args.per_device_train_batch_size": 4,
        },
        seed=1,
        has_validation=False,
    )
    dataset = write_data(tmp_path / "upload", CONVERSATIONS) / "train.jsonl"
    directory = JobDir.for_job(tmp_path / "artifacts", "job-1")
    # when the worker writes the job directory and launches the typed command
    prepare(directory, config=resolved.config, train_file=dataset, validation_file=None)
    assert YAML(typ="safe", pure=True).load(directory.config) == resolved.config
    assert load_config(directory.config).model_dump(mode="json") == resolved.config
    command = TrainerCommand(
        nproc=1,
        args=TrainerArgs(
            data_dir=directory.data,
            model_dir=tiny_model_dir,
            config_path=directory.config,
            output_dir=directory.output,
            base_model_name="tiny",
            lock=directory.lock,
            attempt=1,
        ),
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        command.argv(), cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    # then it trained, and every line it wrote parses into the contract's events
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [parse_event(raw) for raw in EventTail(directory.events).read_new()]
    assert not [e for e in events if isinstance(e, UnknownEvent)]
    kinds = [type(e) for e in events]
    assert kinds[0] is StartedEvent and kinds.count(StepEvent) == 2
    assert CheckpointEvent in kinds and EvalEvent not in kinds
    assert events[-1] == StatusEvent(status="succeeded", time=events[-1].time)
