"""Helpers to run the real trainer as a subprocess on the tiny model, as the worker does."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ruamel.yaml import YAML

from trainer.cli import main
from trainer.contract.events import read_events

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIGS = REPO / "configs" / "tiny"


def tiny_config(method: str, **overrides: Any) -> dict[str, Any]:
    """A tiny preset with ``overrides`` merged in (``training_args={...}`` merges one level)."""
    config: dict[str, Any] = YAML(typ="safe", pure=True).load(TINY_CONFIGS / f"{method}.yaml")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **copy.deepcopy(value)}
        else:
            config[key] = value
    return config


def train_only_config(method: str, max_steps: int, **overrides: Any) -> dict[str, Any]:
    """:func:`tiny_config` for a short run that trains only (no dev set, evaluation or saves),
    logging every step, batches of 4."""
    return tiny_config(
        method,
        data_config={"val_file": None},
        training_args={
            "max_steps": max_steps,
            "logging_steps": 1,
            "eval_strategy": "no",
            "save_strategy": "no",
            "per_device_train_batch_size": 4,
        },
        **overrides,
    )


def write_data(
    directory: Path, conversations: list[dict[str, Any]], name: str = "train.jsonl"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(
        "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8"
    )
    return directory


def run_finetune(
    data_dir: Path,
    model_dir: Path,
    config: dict[str, Any],
    output_dir: Path,
    resume: str = "",
    *,
    nproc: int | None = None,
    timeout: int = 600,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    config_path = output_dir.parent / f"{output_dir.name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    with config_path.open("w", encoding="utf-8") as fh:
        YAML(typ="safe", pure=True).dump(config, fh)
    args = [str(data_dir), str(model_dir), str(config_path)]
    if resume:
        args.append(resume)
    args += ["--output-dir", str(output_dir), *(extra_args or [])]
    if nproc:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "trainer.finetune",
        ]
    else:
        launcher = [sys.executable, "-m", "trainer.finetune"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        launcher + args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, read_events(output_dir)


def losses(events: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


def final_status(events: list[dict[str, Any]]) -> dict[str, Any]:
    statuses = [e for e in events if e["event"] == "status"]
    assert statuses, "the trainer wrote no final status event"
    return statuses[-1]


def glmft(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def glmft_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> SimpleNamespace:
    """``glmft ARGS`` in this process (no interpreter start-up): exit code and output."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def assert_same_gradients(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Two runs' parameter gradients (``name: grad``): the same parameters, values within float32
    noise."""
    import torch

    assert got.keys() == want.keys() and want
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def steps_on_random_ids(model: Any, lengths: tuple[int, ...]) -> list[tuple[float, dict[str, Any]]]:
    """Forward and backward on two rows of random ids of each length (seeded per step):
    ``(loss, name: gradient)`` of each step."""
    import torch

    results = []
    for step, length in enumerate(lengths):
        torch.manual_seed(step)
        ids = torch.randint(10, 500, (2, length))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads))
        model.zero_grad()
    return results
