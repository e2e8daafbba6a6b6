"""The real trainer on a tiny GLM-4 on CPU: each method learns, adapters chat, resume is exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.finetune_helpers import (
    final_status,
    glmft_in_process,
    losses,
    run_finetune,
    tiny_config,
    write_data,
)
from trainer.checkpoints import METADATA_FILE

ANSWERS = {
    "类型#裙*颜色#黑色*风格#休闲": "这款黑色裙经典大方，休闲设计带来轻松自在。",
    "类型#上衣*颜色#白色*风格#复古": "这款白色上衣干净大方，复古设计带来怀旧韵味。",
}
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in ANSWERS.items()
]
GREEDY = ("--greedy", "--max-new-tokens", "40", "--repetition-penalty", "1.0")
QUICK_ARGS = {"eval_strategy": "no", "save_steps": 1000, "logging_steps": 5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_data(tmp_path_factory.mktemp("data"), CONVERSATIONS)
    return write_data(directory, CONVERSATIONS, name="dev.jsonl")


@pytest.fixture(scope="module")
def lora_run(
    data_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    output = tmp_path_factory.mktemp("lora") / "out"
    config = tiny_config(
        "lora",
        training_args={
            "max_steps": 60,
            "learning_rate": 5e-3,
            "eval_steps": 60,
            "save_steps": 30,
            "logging_steps": 10,
        },
    )
    proc, events = run_finetune(data_dir, tiny_model_dir, config, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output, events


def test_lora_loss_falls_and_events_report_progress(lora_run: Any) -> None:
    _, events = lora_run
    steps = losses(events)
    assert steps[60] < steps[10] - 2.0
    started = events[0]
    assert started["event"] == "started" and started["method"] == "lora"
    assert 0 < started["trainable_params"] < started["total_params"]
    step = next(e for e in events if e["event"] == "step")
    assert step["tokens_per_second"] > 0 and step["learning_rate"] > 0
    assert step["grad_norm"] is not None and step["epoch"] > 0
    evals = [e for e in events if e["event"] == "eval"]
    assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4"} <= set(evals[-1]["metrics"])
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [30, 60]
    assert all(c["bytes"] > 0 and Path(c["path"]).is_dir() for c in checkpoints)
    assert final_status(events) == {**final_status(events), "status": "succeeded"}


def test_lora_checkpoint_records_base_and_config(lora_run: Any, tiny_model_dir: Path) -> None:
    output, _ = lora_run
    meta = json.loads((output / "checkpoint-60" / METADATA_FILE).read_text())
    assert meta["base_model"] == tiny_model_dir.name
    assert meta["method"] == "lora" and meta["step"] == 60
    assert len(meta["data_sha256"]) == 64
    assert meta["config"]["peft_config"]["peft_type"] == "LORA"
    assert (output / "checkpoint-60" / "adapter_model.safetensors").is_file()


def test_chat_with_lora_adapter_reproduces_a_trained_answer(
    capsys: pytest.CaptureFixture[str], lora_run: Any, tiny_model_dir: Path
) -> None:
    output, _ = lora_run
    prompt, answer = next(iter(ANSWERS.items()))
    tuned = glmft_in_process(
        capsys,
        "chat",
        str(output / "checkpoint-60"),
        "--prompt",
        prompt,
        *GREEDY,
    )
    base = glmft_in_process(
        capsys,
        "chat",
        str(tiny_model_dir),
        "--prompt",
        prompt,
        *GREEDY,
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert tuned.stdout.strip() == answer
    assert base.returncode == 0 and base.stdout.strip() != answer


def test_chat_finds_a_moved_base_with_base_flag(
    capsys: pytest.CaptureFixture[str], lora_run: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    output, _ = lora_run
    adapter = tmp_path / "adapter"
    shutil.copytree(output / "checkpoint-60", adapter)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    config_file.write_text(json.dumps(config))
    missing = glmft_in_process(
        capsys, "chat", str(adapter), "--prompt", "hi", "--max-new-tokens", "4"
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    found = glmft_in_process(
        capsys,
        "chat",
        str(adapter),
        "--base",
        str(tiny_model_dir),
        "--prompt",
        next(iter(ANSWERS)),
        "--greedy",
        "--max-new-tokens",
        "40",
        "--repetition-penalty",
        "1.0",
    )
    assert found.returncode == 0 and found.stdout.strip() == next(iter(ANSWERS.values()))


def test_ptuning_v2_trains_and_its_generation_differs_from_base(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        "ptuning_v2", training_args={**QUICK_ARGS, "max_steps": 30, "learning_rate": 1e-2}
    )
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = losses(events)
    assert steps[max(steps)] < steps[min(steps)]
    checkpoint = tmp_path / "out" / "checkpoint-30"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["peft_type"] == (
        "PREFIX_TUNING"
    )
    prompt = next(iter(ANSWERS))
    args = ["--prompt", prompt, "--greedy", "--max-new-tokens", "16"]
    tuned, base = (
        glmft_in_process(capsys, "chat", str(checkpoint), *args),
        glmft_in_process(capsys, "chat", str(tiny_model_dir), *args),
    )
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert tuned.stdout != base.stdout


def test_full_sft_overfits_and_checkpoint_is_a_standalone_model(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config("sft", training_args={**QUICK_ARGS, "max_steps": 40})
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = losses(events)
    assert steps[40] < 0.5 < steps[5]
    checkpoint = tmp_path / "out" / "checkpoint-40"
    assert (checkpoint / "tokenizer.json").is_file() and (checkpoint / "config.json").is_file()
    prompt, answer = next(iter(ANSWERS.items()))
    reply = glmft_in_process(
        capsys,
        "chat",
        str(checkpoint),
        "--prompt",
        prompt,
        *GREEDY,
    )
    assert reply.returncode == 0 and reply.stdout.strip() == answer


def test_resume_continues_at_the_right_step_with_the_same_losses(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        "lora",
        training_args={
            **QUICK_ARGS,
            "max_steps": 8,
            "save_steps": 4,
            "logging_steps": 1,
            "learning_rate": 5e-3,
        },
    )
    config["peft_config"]["lora_dropout"] = 0.1  # RNG state must be restored too
    proc, straight = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # given a run interrupted after checkpoint 4, with a half-written checkpoint 8
    resumed_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoint-4", resumed_dir / "checkpoint-4")
    (resumed_dir / "checkpoint-8").mkdir()
    # when resumed with "yes", then it skips the incomplete one and matches the straight run
    proc, resumed = run_finetune(data_dir, tiny_model_dir, config, resumed_dir, "yes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed[0]["resume_from"].endswith("checkpoint-4")
    after = losses(resumed)
    assert sorted(after) == [5, 6, 7, 8]
    for step, loss in after.items():
        assert loss == pytest.approx(losses(straight)[step], abs=1e-5)


def test_resume_from_a_missing_step_is_an_input_error(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config("lora", training_args={**QUICK_ARGS, "max_steps": 2})
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out", "7")
    assert proc.returncode == 2
    assert final_status(events)["code"] == "checkpoint_not_found"
    assert "checkpoint 7 not found" in final_status(events)["message"]


def test_bad_config_and_bad_data_fail_before_training(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bad_config = tiny_config("lora", training_args={"learning_rat": 1e-3})
    proc, events = run_finetune(data_dir, tiny_model_dir, bad_config, tmp_path / "c")
    assert proc.returncode == 2
    assert final_status(events)["code"] == "invalid_config"
    assert "training_args.learning_rat: unknown key" in final_status(events)["message"]

    bad_data = write_data(
        tmp_path / "bad", [CONVERSATIONS[0], {"messages": [{"role": "user", "content": "hi"}]}]
    )
    config = tiny_config(
        "lora",
        data_config={
            "train_file": "train.jsonl",
            "val_file": None,
            "test_file": None,
            "num_proc": 1,
        },
    )
    proc, events = run_finetune(bad_data, tiny_model_dir, config, tmp_path / "d")
    assert proc.returncode == 2
    status = final_status(events)
    assert status["code"] == "invalid_data" and "train.jsonl:2" in status["message"]
    assert not any(e["event"] == "step" for e in events)


def test_eval_without_generation_reports_eval_loss(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        "lora",
        training_args={
            "max_steps": 4,
            "eval_steps": 4,
            "save_steps": 1000,
            "logging_steps": 2,
            "predict_with_generate": False,
        },
    )
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (evaluation,) = [e for e in events if e["event"] == "eval"]
    assert evaluation["step"] == 4 and evaluation["metrics"]["loss"] > 0
    assert "rouge-1" not in evaluation["metrics"]


def test_a_diverging_run_fails_instead_of_logging_zero_loss(
    data_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        "sft",
        training_args={**QUICK_ARGS, "max_steps": 6, "logging_steps": 1, "learning_rate": 1e30},
    )
    proc, events = run_finetune(data_dir, tiny_model_dir, config, tmp_path / "out")
    assert proc.returncode == 1
    status = final_status(events)
    assert status["code"] == "training_diverged" and status["user_error"] is False
    assert "lower the learning rate" in status["message"]
    assert all(e["loss"] == e["loss"] for e in events if e["event"] == "step")  # no NaN logged
