"""Parts of ``glmft-client`` that need no service: exit codes, keys, ``--set``, prompts and the
compare table."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from glmft_client.cli.chat import read_prompts
from glmft_client.cli.console import CLIError, ExitCode, Progress, exit_code_for
from glmft_client.cli.finetune import derive_key, parse_pairs
from glmft_client.cli.table import render_table
from glmft_client.errors import (
    APIConnectionError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    ServerError,
    WaitTimeoutError,
    error_from_response,
)
from glmft_client.types import Job


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequestError("bad", status_code=422), ExitCode.INVALID_INPUT),
        (NotFoundError("no model", status_code=404), ExitCode.INVALID_INPUT),
        (AuthenticationError("key", status_code=401), ExitCode.API_ERROR),
        (ServerError("boom", status_code=500), ExitCode.API_ERROR),
        (APIConnectionError("refused"), ExitCode.API_ERROR),
        (WaitTimeoutError("job-1", 5.0), ExitCode.TIMEOUT),
        (CLIError("failed", ExitCode.JOB_FAILED), ExitCode.JOB_FAILED),
    ],
)
def test_each_error_kind_has_its_exit_code(error: Exception, code: ExitCode) -> None:
    assert exit_code_for(error) == code  # type: ignore[arg-type]


def test_error_responses_map_to_classes_with_their_fields() -> None:
    native = httpx.Response(
        409,
        headers={"X-Request-ID": "r-1"},
        json={"error": {"code": "invalid_job_transition", "message": "done", "param": "x"}},
    )
    openai_shaped = httpx.Response(
        404, json={"error": {"message": "gone", "type": "invalid_request_error", "code": "c"}}
    )
    plain = httpx.Response(502, text="bad gateway")
    conflict, missing, gateway = (error_from_response(r) for r in (native, openai_shaped, plain))
    assert (type(conflict).__name__, conflict.code, conflict.request_id) == (
        "ConflictError",
        "invalid_job_transition",
        "r-1",
    )
    assert isinstance(missing, NotFoundError) and missing.message == "gone"
    assert isinstance(gateway, ServerError) and gateway.message == "bad gateway"


def test_the_key_is_stable_within_a_ci_run_and_fresh_outside_ci() -> None:
    inputs = {"model": "m", "train": "sha"}
    run = {"GITHUB_RUN_ID": "7", "GITHUB_RUN_ATTEMPT": "1"}
    assert derive_key(inputs, run) == derive_key(dict(inputs), dict(run))
    assert derive_key(inputs, run) != derive_key(inputs, {**run, "GITHUB_RUN_ATTEMPT": "2"})
    assert derive_key(inputs, run) != derive_key({**inputs, "train": "other"}, run)
    assert derive_key(inputs, {}) != derive_key(inputs, {})


def test_set_values_parse_as_json_when_they_can() -> None:
    parsed = parse_pairs(
        ["a.b=500", "c=5e-4", "d=true", "e=text", "f=[1]"], "--set", json_values=True
    )
    assert parsed == {"a.b": 500, "c": 5e-4, "d": True, "e": "text", "f": [1]}
    with pytest.raises(CLIError, match="expected KEY=VALUE"):
        parse_pairs(["novalue"], "--set", json_values=True)


def test_prompts_file_forms_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "a"}\n\n"b"\n{"messages": [{"role": "user", "content": "c"}]}\n',
        encoding="utf-8",
    )
    assert [p[-1]["content"] for p in read_prompts(path)] == ["a", "b", "c"]
    path.write_text('{"prompt": "a"}\n{"x": 1}\n', encoding="utf-8")
    with pytest.raises(CLIError, match=r"prompts.jsonl:2: expected"):
        read_prompts(path)


def test_compare_table_wraps_long_answers_in_their_columns() -> None:
    table = render_table(
        ["#", "prompt", "A", "B"],
        [["1", "hello", "short", "a much longer answer that wraps"]],
        [2, 8, 8, 12],
    )
    lines = table.splitlines()
    assert lines[1] == "| #  | prompt   | A        | B            |"
    assert "| 1  | hello    | short    | a much       |" in lines
    assert "|    |          |          | longer       |" in lines
    assert len({len(line) for line in lines}) == 1  # every row as wide as the rules


def test_progress_writes_plain_lines_without_a_terminal(tmp_path: Path) -> None:
    log = (tmp_path / "log").open("w+", encoding="utf-8")
    progress = Progress(log, interval_s=3600)
    base = {
        "id": "job-1",
        "model": "m",
        "method": "lora",
        "training_dataset": "ds",
        "gpus": 0,
        "max_attempts": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "max_steps": 4,
    }
    for state, step in (("queued", 0), ("running", 1), ("running", 2), ("succeeded", 4)):
        progress.update(
            Job.model_validate({**base, "state": state, "step": step, "progress": step / 4})
        )
    log.seek(0)
    assert log.read().splitlines() == [
        "job-1: queued, step 0/4 (0%)",
        "job-1: running, step 1/4 (25%)",
        "job-1: succeeded, step 4/4 (100%)",
    ]
