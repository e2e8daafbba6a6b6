"""The sync SDK against the live service: datasets, a job trained to the end, its outputs, and
the error classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from glmft_client import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)

from tests.clients.conftest import TrainedJob
from tests.live_service import MODEL, LiveService, demo_jsonl

BAD_LINES = [
    json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ),
    json.dumps({"messages": [{"role": "bot", "content": "hi"}]}),
    "{not json",
]


def test_upload_reports_progress_and_every_bad_line(client: Client, tmp_path: Path) -> None:
    # given a valid and an invalid file on disk
    good = tmp_path / "train.jsonl"
    good.write_bytes(demo_jsonl(4))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    seen: list[tuple[int, int]] = []
    # when both are uploaded
    dataset = client.datasets.upload(
        good, on_progress=lambda sent, total: seen.append((sent, total))
    )
    invalid = client.datasets.upload(bad)
    # then the progress reached the file's size, and the report names the bad lines
    assert seen and seen[-1] == (good.stat().st_size, good.stat().st_size)
    assert dataset.valid and dataset.conversations == 4 and dataset.filename == "train.jsonl"
    assert not invalid.valid
    assert sorted({issue.line for issue in invalid.report.errors}) == [2, 3]
    assert client.datasets.report(invalid.id).errors == invalid.report.errors
    assert dataset.id in {d.id for d in client.datasets.list(limit=100).data}


def test_validate_checks_with_the_server_rules_and_keeps_nothing(client: Client) -> None:
    # when a file is validated
    report = client.datasets.validate("\n".join(BAD_LINES).encode(), filename="check.jsonl")
    # then its issues come back and no dataset was kept
    assert not report.valid and {i.code for i in report.errors} >= {"role_invalid", "invalid_json"}
    names = {d.filename for d in client.datasets.list(limit=100).data}
    assert "check.jsonl" not in names


def test_a_job_trains_and_its_events_metrics_checkpoints_are_readable(
    client: Client, trained_job: TrainedJob
) -> None:
    job = trained_job.finished
    # the job succeeded on CPU (the default of a fleet without GPUs) and became a model
    assert job.state == "succeeded" and job.done, job.error
    assert trained_job.created.gpus == 0 and job.gpus == 0
    assert job.adapter_id == f"ft:{MODEL}:sdk:{job.id}"
    assert job.adapter_id in {m.id for m in client.models.list()}
    # following live streamed every event once, in order, up to the final status
    past = list(client.jobs.events(job.id))
    assert [e.id for e in trained_job.followed] == [e.id for e in past]
    # every state it entered is an event, around the trainer's own
    kinds = [e.kind for e in past]
    assert kinds[:3] == ["queued", "running", "started"], kinds
    assert kinds[-2:] == ["status", "succeeded"], kinds
    assert past[1].data["previous"] == "queued" and past[1].data["worker"] == "clients-node"
    assert {"step", "checkpoint"} <= set(kinds)
    # a stream opened after the end replays and ends too
    assert [e.id for e in client.jobs.events(job.id, follow=True, after=past[1].id)] == [
        e.id for e in past[2:]
    ]
    losses = client.jobs.metrics(job.id, split="train", name="loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert [c.step for c in client.jobs.checkpoints(job.id)] == [2, 4]
    found = client.jobs.list(metadata={"suite": "sdk"}, state="succeeded").data
    assert [j.id for j in found] == [job.id]


def test_every_shipped_tiny_preset_trains_on_the_tiny_base(client: Client) -> None:
    # given the three tiny presets as they ship, for two steps each
    dataset = client.datasets.upload(demo_jsonl(8), filename="train.jsonl")
    quick = {"training_args.max_steps": 2, "training_args.eval_strategy": "no"}
    jobs = [
        client.jobs.create(
            model=MODEL,
            method=method,
            training_dataset=dataset.id,
            config=f"tiny/{method}",
            overrides=quick,
            suffix=f"preset-{method.replace('_', '-')}",
        )
        for method in ("lora", "ptuning_v2", "sft")
    ]
    # then each trains to the end on the base the service registers
    for job in jobs:
        done = client.jobs.wait(job.id, timeout=300, poll_interval=0.5)
        assert done.state == "succeeded", (job.method, done.error)
        assert done.adapter_id and [c.step for c in client.jobs.checkpoints(job.id)] == [2]


def test_check_refuses_a_model_or_gpus_before_any_upload(client: Client) -> None:
    checked = client.jobs.check(model=MODEL, method="lora", config="tiny/lora")
    assert (checked.gpus, checked.max_steps) == (0, 150)
    with pytest.raises(NotFoundError) as unknown:
        client.jobs.check(model="glm-4-nope", method="lora")
    assert unknown.value.code == "model_not_found" and MODEL in unknown.value.message
    with pytest.raises(InvalidRequestError) as refused:
        client.jobs.check(model=MODEL, method="lora", config="tiny/lora", gpus=1)
    assert (refused.value.code, refused.value.param) == ("insufficient_capacity", "gpus")


def test_errors_carry_status_code_message_and_request_id(
    client: Client, live_service: LiveService, trained_job: TrainedJob
) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.jobs.retrieve("job-missing")
    assert missing.value.status_code == 404 and missing.value.code == "job_not_found"
    assert "job-missing" in missing.value.message and len(missing.value.request_id or "") >= 16
    with pytest.raises(InvalidRequestError) as invalid:
        client.jobs.create(
            model=MODEL,
            method="lora",
            training_dataset=trained_job.dataset.id,
            config="tiny/lora",
            overrides={"training_args.learning_rat": 1},
        )
    assert invalid.value.code == "invalid_config"
    assert invalid.value.param == "overrides.training_args.learning_rat"
    with pytest.raises(ConflictError) as conflict:
        client.jobs.cancel(trained_job.finished.id)
    assert conflict.value.code == "invalid_job_transition"
    with (
        Client(base_url=live_service.base_url, api_key="sk-wrong") as stranger,
        pytest.raises(AuthenticationError) as denied,
    ):
        stranger.models.list()
    assert denied.value.status_code == 401 and denied.value.code == "unauthorized"


def test_api_key_and_base_url_come_from_the_environment(
    live_service: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMFT_BASE_URL", live_service.base_url + "/")
    monkeypatch.setenv("GLMFT_API_KEY", live_service.api_key)
    with Client() as sdk:
        assert sdk.base_url == live_service.base_url
        assert MODEL in {m.id for m in sdk.models.list()}
