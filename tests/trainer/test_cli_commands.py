"""``glmft tokenize`` and ``glmft demo``: what a person runs to see what the model trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.finetune_helpers import REPO, glmft, glmft_in_process, write_data
from tests.trainer.test_template import MULTI_TURN
from trainer.template import SpecialTokens, encode_train


def test_tokenize_prints_the_training_ids_and_labels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    data = write_data(tmp_path, [{"messages": MULTI_TURN}, {"messages": MULTI_TURN[1:3]}])
    proc = glmft_in_process(
        capsys,
        "tokenize",
        str(data / "train.jsonl"),
        "--model",
        str(tiny_model_dir),
        "--no-combine",
        "--max-input-length",
        "512",
        "--max-output-length",
        "512",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    expected = encode_train(
        tiny_tokenizer,
        SpecialTokens.from_tokenizer(tiny_tokenizer),
        MULTI_TURN,
        combine=False,
        max_length=1025,
    )
    assert rows[0]["input_ids"] == expected.input_ids
    assert rows[0]["labels"] == expected.labels


def test_tokenize_eval_prints_one_prompt_per_assistant_turn(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path, tiny_tokenizer: Any
) -> None:
    data = write_data(tmp_path, [{"messages": MULTI_TURN}])
    proc = glmft_in_process(
        capsys,
        "tokenize",
        str(data / "train.jsonl"),
        "--model",
        str(tiny_model_dir),
        "--config",
        str(REPO / "configs" / "lora.yaml"),
        "--eval",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]  # combine: last turn only
    assert row["line"] == 1 and row["turn"] == 1
    assert tiny_tokenizer.decode(row["prompt_ids"]).endswith("换成白色呢？<|assistant|>")
    assert tiny_tokenizer.decode(row["target_ids"]) == "\n白色裙干净清爽。<|user|>"


def test_tokenize_reports_invalid_lines_and_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write_data(
        tmp_path, [{"messages": MULTI_TURN}, {"messages": [{"role": "user", "content": "hi"}]}]
    )
    proc = glmft_in_process(
        capsys, "tokenize", str(data / "train.jsonl"), "--model", str(tiny_model_dir)
    )
    assert proc.returncode == 1
    assert len(proc.stdout.splitlines()) == 1
    assert "train.jsonl:2: " in proc.stderr


def test_tokenize_without_a_model_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = write_data(tmp_path, [{"messages": MULTI_TURN}])
    proc = glmft_in_process(
        capsys, "tokenize", str(data / "train.jsonl"), "--model", str(tmp_path / "none")
    )
    assert proc.returncode == 2 and proc.stderr.startswith("glmft tokenize: error:")


def test_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    proc = glmft("demo", "--workdir", str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[4/4] chat" in out
    lines = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in out.splitlines()
        if line.startswith("  ")
    }
    # the adapter writes in the style of the bundled ad copy; the random base cannot
    assert lines["adapter"].startswith("这款") and lines["adapter"].endswith("日常穿搭很出彩。")
    assert lines["base model"] != lines["adapter"]
    events = [
        json.loads(x) for x in (tmp_path / "output" / "events.jsonl").read_text().splitlines()
    ]
    assert events[-1] == {**events[-1], "event": "status", "status": "succeeded"}
    scores = [e["metrics"] for e in events if e["event"] == "eval"][-1]
    assert scores["rouge-1"] > 50  # held-out dev.jsonl
    assert '"rouge-1"' in out


def test_quickstart_runs_the_main_job_through_the_service(tmp_path: Path) -> None:
    # the README's first command: glmft up on embedded defaults (SQLite, sqla+sqlite broker)
    proc = glmft("quickstart", "--home", str(tmp_path / "home"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout
    assert "valid=True" in out and "following its events" in out
    assert "      step 10: loss" in out and "eval at step 75" in out
    assert "checkpoints at steps 75, 150" in out
    answer = out.split("[5/5] ")[1]
    assert answer.startswith("ft:glm-4-tiny:demo:job-") and "日常穿搭很出彩。" in answer
    assert (tmp_path / "home" / "glmft.db").is_file()  # the embedded store
    # what glmft up printed: where the API and its docs are and what to run next, nothing else
    shown = (tmp_path / "home" / "service.log").read_text(encoding="utf-8")
    assert "/docs" in shown and "glmft-client --base-url http://127.0.0.1:" in shown
    for noise in ("alembic", "SecurityWarning", "celery@", "Uvicorn running"):
        assert noise not in shown, noise
    assert "celery@" in (tmp_path / "home" / "logs" / "worker.log").read_text(encoding="utf-8")


def test_every_argument_of_every_command_has_a_help_text() -> None:
    import argparse

    from trainer.cli import build_parser

    commands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    assert {"finetune", "validate", "up"} <= set(commands)
    silent = [
        f"glmft {name} {action.dest}"
        for name, parser in commands.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert silent == []
    finetune = commands["finetune"].format_help()
    for word in ("DATA_DIR", "MODEL_DIR", "CONFIG", "yes|N|no", "checkpoint-N", "--output-dir"):
        assert word in finetune
