"""``glmft-client`` against the live service: the exit codes CI relies on (0 success, 2 invalid
data, 1 failed job, 3 timeout) and the job commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from glmft_client import Client
from glmft_client.cli import main
from glmft_client.cli.finetune import CI_VARIABLES

from tests.live_service import LONG_OVERRIDES, MODEL, TINY_OVERRIDES, LiveService, demo_jsonl

CLI = Path(sys.executable).parent / "glmft-client"
TINY_LORA = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "lora.yaml"


def sets(overrides: dict[str, Any]) -> list[str]:
    return [f"--set={key}={json.dumps(value)}" for key, value in overrides.items()]


def finetune_args(
    train: Path, *extra: str, overrides: dict[str, Any] = TINY_OVERRIDES
) -> list[str]:
    return [
        "finetune",
        f"--model={MODEL}",
        "--method=lora",
        f"--train={train}",
        "--poll-interval=0.5",
        *sets(overrides),
        *extra,
    ]


def ci_env(live_service: LiveService, outputs: Path) -> dict[str, str]:
    """A CI job's environment: the service, a fresh run id, a GitHub step-output file."""
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    return {
        **env,
        "GLMFT_BASE_URL": live_service.base_url,
        "GLMFT_API_KEY": live_service.api_key,
        "GITHUB_RUN_ID": uuid.uuid4().hex,
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_OUTPUT": str(outputs),
    }


def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    *args: str,
) -> SimpleNamespace:
    """``glmft-client ARGS`` in this process with ``env``: exit code and output."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("GLMFT_BASE_URL", "GLMFT_API_KEY", "GITHUB_OUTPUT", *CI_VARIABLES):
        if name in env:
            monkeypatch.setenv(name, env[name])
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return SimpleNamespace(code=code, out=out, err=err)


def step_outputs(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines)


def test_finetune_prints_the_adapter_and_a_retried_ci_step_follows_the_same_job(
    live_service: LiveService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given training data and a CI job's environment
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_jsonl(8))
    env = ci_env(live_service, tmp_path / "github_output")
    args = finetune_args(train, "--config=tiny/lora", "--suffix=cli", "--wait", "--timeout=300")
    # when the installed console script runs it (not a terminal: plain progress lines)
    proc = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=400, check=False
    )
    # then it succeeds and prints the adapter id, and the step outputs name job and adapter
    assert proc.returncode == 0, proc.stderr
    adapter = proc.stdout.strip()
    outputs = step_outputs(tmp_path / "github_output")
    assert adapter == outputs["adapter_id"] == f"ft:{MODEL}:cli:{outputs['job_id']}"
    assert "valid (local check)" in proc.stderr and "\r" not in proc.stderr
    assert f"{outputs['job_id']}: succeeded, step 4/4 (100%)" in proc.stderr
    # when the CI step is retried in the same run, it follows that job instead of training again
    again = cli(capsys, monkeypatch, env, *args)
    assert again.code == 0 and again.out.strip() == adapter, again.err
    assert "already created" in again.err
    events = cli(capsys, monkeypatch, env, "jobs", "events", outputs["job_id"], "--follow")
    kinds = [line.split()[1] for line in events.out.splitlines()]
    assert events.code == 0 and kinds[:3] == ["queued", "running", "started"], events.out
    assert kinds[-2:] == ["status", "succeeded"], events.out
    assert kinds.count("checkpoint") == 2
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        assert [j.id for j in client.jobs.list(model=MODEL, limit=100).data].count(
            outputs["job_id"]
        ) == 1


def test_invalid_data_exits_2_naming_the_line(
    live_service: LiveService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = tmp_path / "broken.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    )
    broken.write_text(
        good + "\n" + json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n",
        encoding="utf-8",
    )
    env = ci_env(live_service, tmp_path / "github_output")
    # the local check (glmft is installed here) names file, line, path and code
    local = cli(capsys, monkeypatch, env, *finetune_args(broken, "--config=tiny/lora"))
    assert local.code == 2
    assert f"{broken}:2: messages[0].role: " in local.err and "[role_invalid]" in local.err
    # without it, the server's report does the same after the upload
    remote = cli(
        capsys,
        monkeypatch,
        env,
        *finetune_args(broken, "--config=tiny/lora", "--no-local-validation"),
    )
    assert remote.code == 2 and f"{broken}:2: messages[0].role: " in remote.err
    assert "server validation" in remote.err
    # a config the server refuses and a missing file are invalid input too
    refused = cli(
        capsys, monkeypatch, env, *finetune_args(tmp_path / "missing.jsonl", "--config=tiny/lora")
    )
    assert refused.code == 2 and "no such file" in refused.err
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_jsonl(4))
    bad_key = cli(
        capsys,
        monkeypatch,
        env,
        *finetune_args(train, "--config=tiny/lora", overrides={"training_args.learning_rat": 1}),
    )
    assert bad_key.code == 2
    assert "invalid_config: training_args.learning_rat: unknown key" in bad_key.err
    assert not step_outputs(tmp_path / "github_output")  # no job was created


def test_an_unknown_model_or_refused_gpus_exit_2_before_any_upload(
    live_service: LiveService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_jsonl(4))
    env = ci_env(live_service, tmp_path / "github_output")
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        before = {d.id for d in client.datasets.list(limit=100).data}
        typo = cli(capsys, monkeypatch, env, *finetune_args(train, "--model=glm-4-tyni"))
        assert typo.code == 2 and "model_not_found" in typo.err and MODEL in typo.err
        gpus = cli(
            capsys, monkeypatch, env, *finetune_args(train, "--config=tiny/lora", "--gpus=2")
        )
        assert gpus.code == 2 and "insufficient_capacity" in gpus.err, gpus.err
        # neither left a dataset behind
        assert {d.id for d in client.datasets.list(limit=100).data} == before
    assert "uploaded" not in typo.err + gpus.err


def test_a_failed_job_exits_1_with_its_error_code(
    live_service: LiveService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a config file whose learning rate makes the loss diverge
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_jsonl(8))
    env = ci_env(live_service, tmp_path / "github_output")
    overrides = {**TINY_OVERRIDES, "training_args.learning_rate": 1e30}
    result = cli(
        capsys,
        monkeypatch,
        env,
        *finetune_args(
            train, f"--config={TINY_LORA}", "--wait", "--timeout=300", overrides=overrides
        ),
    )
    assert result.code == 1, result.err
    job_id = step_outputs(tmp_path / "github_output")["job_id"]
    assert f"job {job_id} failed: training_diverged: " in result.err
    assert result.out == ""


def test_a_timeout_exits_3_and_the_job_commands_cancel_and_inspect_it(
    live_service: LiveService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes(demo_jsonl(4))
    env = ci_env(live_service, tmp_path / "github_output")
    timed_out = cli(
        capsys,
        monkeypatch,
        env,
        *finetune_args(
            train, "--config=tiny/lora", "--wait", "--timeout=1", overrides=LONG_OVERRIDES
        ),
    )
    job_id = step_outputs(tmp_path / "github_output")["job_id"]
    assert timed_out.code == 3, timed_out.err
    assert f"timeout: job {job_id} did not finish within 1 s" in timed_out.err
    assert f"glmft-client jobs cancel {job_id}" in timed_out.err
    # the job commands: cancel it, wait (a cancelled job exits 1), list, show
    assert cli(capsys, monkeypatch, env, "jobs", "cancel", job_id).code == 0
    waited = cli(capsys, monkeypatch, env, "jobs", "wait", job_id, "--poll-interval=0.3")
    assert waited.code == 1 and f"job {job_id} cancelled" in waited.err
    listed = cli(capsys, monkeypatch, env, "jobs", "list", "--state=cancelled", "--limit=100")
    assert listed.code == 0 and job_id in listed.out
    shown = cli(capsys, monkeypatch, env, "jobs", "show", job_id)
    assert json.loads(shown.out)["state"] == "cancelled"
    again = cli(capsys, monkeypatch, env, "jobs", "cancel", job_id)
    assert again.code == 2 and "invalid_job_transition" in again.err


def test_an_unreachable_service_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"GLMFT_BASE_URL": "http://127.0.0.1:9"}  # discard port: nothing listens
    result = cli(capsys, monkeypatch, env, "--max-retries=0", "jobs", "list")
    assert result.code == 4 and "connection: GET /jobs failed: ConnectError" in result.err
