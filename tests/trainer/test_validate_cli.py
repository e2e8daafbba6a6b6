"""``glmft validate``: exit codes, plain and JSON output, token-statistics hook."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainer.commands import validate

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "messages": [
        {"role": "user", "content": "类型#裙*风格#性感"},
        {"role": "assistant", "content": "这款裙子很好看。"},
    ]
}
NULL_CONTENT = {
    "messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "好"}]
}
EMPTY_USER = {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "好"}]}
NO_ANSWER = {"messages": [{"role": "user", "content": "hi"}]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run the subcommand as ``trainer.cli`` wires it: its parser, then ``run(args)``."""
    parser = argparse.ArgumentParser(prog="glmft validate")
    validate.add_arguments(parser)
    code = validate.run(parser.parse_args([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_file_exits_0_with_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD])
    code, out, err = run_cli(capsys, file)
    assert code == 0
    assert out == f"{file}: valid: 2 conversations, 0 errors, 0 warnings\n"
    assert err == ""


def test_invalid_file_exits_1_with_one_line_per_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD, NULL_CONTENT, EMPTY_USER])
    # when
    code, out, _ = run_cli(capsys, file)
    # then
    assert code == 1
    assert out.splitlines() == [
        f"{file}:2: messages[0].content: content must be a string, got null [content_invalid]",
        f"{file}:3: warning: messages[0].content: empty content: the chat template drops this "
        "message [content_empty]",
        f"{file}: invalid: 3 conversations (1 invalid), 1 error, 1 warning",
    ]


def test_json_file_issues_are_located_by_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "d.json"
    file.write_text(json.dumps([GOOD, NO_ANSWER], indent=2), encoding="utf-8")
    code, out, _ = run_cli(capsys, file)
    assert code == 1
    assert out.splitlines()[0].startswith(f"{file}:[1]: messages: no assistant message")
    assert out.splitlines()[0].endswith("[no_assistant_content]")


def test_invalid_json_line_has_no_json_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps(GOOD) + "\n{\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, file)
    assert code == 1
    assert out.splitlines()[0].startswith(f"{file}:2: invalid JSON: ")


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD, NULL_CONTENT, EMPTY_USER])
    code, out, _ = run_cli(capsys, file, "--json")
    assert code == 1
    data = json.loads(out)
    assert set(data) == {"valid", "conversations", "errors", "warnings", "stats"}
    assert (data["valid"], data["conversations"], data["stats"]) == (False, 3, {})
    assert data["errors"] == [
        {
            "file": str(file),
            "line": 2,
            "index": 1,
            "path": "messages[0].content",
            "code": "content_invalid",
            "message": "content must be a string, got null",
        }
    ]
    assert [w["code"] for w in data["warnings"]] == ["content_empty"]


def _with_image(image: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "图里是什么？", "image": image},
            {"role": "assistant", "content": "一只猫。"},
        ]
    }


def test_vision_flag_checks_each_image_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), (0, 0, 0)).save(tmp_path / "cat.jpg")
    (tmp_path / "notes.png").write_text("not an image")
    absolute = str(tmp_path / "cat.jpg")
    file = write_jsonl(
        tmp_path / "d.jsonl",
        [_with_image(i) for i in ("cat.jpg", absolute, "/img/1.jpg", "notes.png")],
    )
    assert run_cli(capsys, write_jsonl(tmp_path / "ok.jsonl", [_with_image("cat.jpg")]))[0] == 1
    code, out, _ = run_cli(capsys, file, "--vision")
    assert code == 1
    assert f"{file}:3: messages[0].image: image file not found: 1.jpg [image_not_found]" in out
    assert f"{file}:4: messages[0].image: notes.png is not a readable image" in out
    assert out.count("[image_") == 2  # lines 1 (relative) and 2 (absolute) are fine
    assert run_cli(capsys, tmp_path / "ok.jsonl", "--vision")[0] == 0


def test_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "train.jsonl", [GOOD])
    write_jsonl(tmp_path / "dev.jsonl", [NO_ANSWER])
    code, out, _ = run_cli(capsys, tmp_path)
    assert code == 1
    assert out.startswith(f"{tmp_path / 'dev.jsonl'}:1: messages: ")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.jsonl", "no such file or directory"),
        ("d.txt", "unsupported file type '.txt'"),
        ("emptydir", "no data file in directory"),
    ],
)
def test_usage_errors_exit_2_with_one_stderr_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, expected: str
) -> None:
    if name == "d.txt":
        (tmp_path / name).write_text("x", encoding="utf-8")
    if name == "emptydir":
        (tmp_path / name).mkdir()
    code, out, err = run_cli(capsys, tmp_path / name)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("glmft validate: error: ")
    assert expected in err


def test_missing_path_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(capsys)
    assert info.value.code == 2
    assert "glmft validate: error:" in capsys.readouterr().err


def test_config_without_model_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    code, _, err = run_cli(capsys, file, "--config", tmp_path / "lora.yaml")
    assert code == 2
    assert "--config needs --model" in err


def test_model_dir_without_tokenizer_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    code, out, err = run_cli(capsys, file, "--model", tmp_path)
    assert code == 2
    assert out == ""
    assert err.startswith("glmft validate: error: token statistics failed")
    assert err.count("\n") == 1


def test_config_lengths_count_truncated_conversations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    # given a conversation longer than the tiny preset's 128 + 128 + 1 tokens
    long = {
        "messages": [
            {"role": "user", "content": "类型#裙" * 200},
            {"role": "assistant", "content": "好"},
        ]
    }
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD, long, GOOD])
    # when
    code, out, _ = run_cli(
        capsys,
        file,
        "--json",
        "--model",
        tiny_model_dir,
        "--config",
        REPO / "configs" / "tiny" / "lora.yaml",
    )
    # then
    assert code == 0
    stats = json.loads(out)["stats"]
    assert stats["max_length"] == 257 and stats["combine"] is False
    assert stats["truncated"] == 1 and stats["truncated_lines"] == [2]
    assert stats["no_target"] == 1 and stats["no_target_lines"] == [2]  # answer cut off
    assert stats["tokens"]["count"] == 3 and stats["tokens"]["max"] > 257
    # the length histogram holds every conversation, from the shortest to the longest
    histogram = stats["histogram"]
    assert sum(histogram["counts"]) == 3 and len(histogram["edges"]) == len(histogram["counts"]) + 1
    assert histogram["edges"][0] == stats["tokens"]["min"]
    assert histogram["edges"][-2] <= stats["tokens"]["max"] < histogram["edges"][-1]
    assert histogram["counts"][0] == 2 and histogram["counts"][-1] == 1  # two short, one long
    # the long conversation's answer is cut off entirely (head-kept truncation): 0 targets
    assert stats["target_tokens"]["min"] == 0
    assert stats["target_tokens"]["max"] > 0


def test_through_the_real_cli_in_a_subprocess(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    bad = write_jsonl(tmp_path / "bad.jsonl", [NO_ANSWER])
    results = {}
    for name, path in (("good", good), ("bad", bad), ("missing", tmp_path / "nope.jsonl")):
        proc = subprocess.run(
            [sys.executable, "-m", "trainer.cli", "validate", str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        results[name] = (proc.returncode, proc.stdout, proc.stderr)
    assert results["good"][0] == 0
    assert results["bad"][0] == 1
    assert "[no_assistant_content]" in results["bad"][1]
    assert results["missing"][0] == 2
    assert results["missing"][2].startswith("glmft validate: error: ")


def test_model_flag_with_the_tiny_model_fills_stats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path
) -> None:
    file = write_jsonl(tmp_path / "d.jsonl", [GOOD, NO_ANSWER, GOOD])
    code, out, _ = run_cli(capsys, file, "--json", "--model", tiny_model_dir)
    assert code == 1
    stats = json.loads(out)["stats"]
    assert stats["tokens"]["count"] == 2  # the two valid conversations


@pytest.mark.parametrize(
    ("values", "edges", "counts"),
    [
        ([], [], []),
        ([7], [7, 8], [1]),
        ([3, 3, 4], [3, 4, 5], [2, 1]),
        (list(range(100)), list(range(0, 101, 5)), [5] * 20),
        ([10, 50], list(range(10, 53, 3)), [1, *[0] * 12, 1]),  # width 3: 41 tokens / 20 bins
    ],
)
def test_length_histogram_bins_every_value_once(
    values: list[int], edges: list[int], counts: list[int]
) -> None:
    from trainer.tokenstats import length_histogram

    histogram = length_histogram(values)
    assert sum(histogram["counts"]) == len(values)
    assert len(histogram["counts"]) <= 20
    assert histogram == {"edges": edges, "counts": counts}
    for value in values:  # each value lies in the bin its index names
        index = next(i for i, edge in enumerate(histogram["edges"][1:]) if value < edge)
        assert histogram["edges"][index] <= value


def test_a_long_run_shows_its_progress_on_stderr_and_a_short_one_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model_dir: Path,
) -> None:
    # given a run that counts as long from its start (a real one: after a second)
    monkeypatch.setattr(validate, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(validate, "PROGRESS_EVERY_S", 0.0)
    file = write_jsonl(tmp_path / "big.jsonl", [GOOD] * 2000)
    # when it is validated with token statistics
    code, out, err = run_cli(capsys, file, "--model", tiny_model_dir)
    # then stderr (not a terminal here: one line each) shows both phases; stdout only the report
    assert code == 0 and out.startswith(f"{file}: valid: 2000 conversations")
    assert "glmft validate: read 1,000 conversations (" in err
    assert "glmft validate: read 2,000 conversations (" in err
    assert "glmft validate: token statistics: 2,000/2,000 conversations (" in err
    assert "\r" not in err
