"""The OpenAI-compatible fine-tuning routes: the official ``openai`` package against the live
service (upload, read back, train to the end with evaluation, list events and checkpoints,
pause, resume, cancel), and OpenAI's error shape on these routes only."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from glmft_client import Client

from api.main import create_app
from core.settings import Settings
from tests.api.helpers import REPO, dataset_id, valid_jsonl
from tests.helpers import wait_for
from tests.live_service import LONG_OVERRIDES, MODEL, TINY_OVERRIDES, LiveService, demo_jsonl

DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture
def oai(live_service: LiveService) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=f"{live_service.base_url}/v1", api_key=live_service.api_key, max_retries=0
    )
    yield client
    client.close()


def glmft(overrides: dict[str, Any]) -> dict[str, Any]:
    """glmft's own job fields, as ``extra_body`` (GPUs left to the service's default)."""
    return {"glmft": {"config": "tiny/lora", "overrides": overrides}}


def tokens_of_one_epoch(model_dir: Path, data: bytes) -> int:
    """The non-pad tokens the tiny LoRA preset trains on in one pass over ``data``."""
    from trainer.config import load_config
    from trainer.data import load_conversations, train_dataset
    from trainer.modeling import load_tokenizer
    from trainer.template import SpecialTokens

    config = load_config(REPO / "configs" / "tiny" / "lora.yaml")
    tokenizer = load_tokenizer(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train.jsonl").write_bytes(data)
        conversations = load_conversations(Path(tmp) / "train.jsonl")
    features = train_dataset(
        tokenizer,
        SpecialTokens.from_tokenizer(tokenizer),
        conversations,
        combine=config.combine,
        max_length=config.max_length,
    ).features
    return sum(len(f["input_ids"]) for f in features)


def finished(client: openai.OpenAI, job_id: str) -> Any:
    job = client.fine_tuning.jobs.retrieve(job_id)
    # glmft's own state: OpenAI's status says cancelled from the moment a cancel is accepted
    return job if job.glmft["state"] in DONE else None  # type: ignore[attr-defined]


def test_the_openai_package_uploads_trains_and_reads_a_job(
    oai: openai.OpenAI, live_service: LiveService, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # given a training file uploaded with purpose fine-tune, and a validation file
    path = tmp_path / "train.jsonl"
    path.write_bytes(demo_jsonl(8))
    with path.open("rb") as handle:
        file = oai.files.create(file=handle, purpose="fine-tune")
    assert (file.object, file.status, file.filename) == ("file", "processed", "train.jsonl")
    assert file.bytes == path.stat().st_size and oai.files.retrieve(file.id).id == file.id
    assert file.id in {f.id for f in oai.files.list()}
    assert oai.files.content(file.id).content == path.read_bytes()
    dev = oai.files.create(file=("dev.jsonl", demo_jsonl(2)), purpose="fine-tune")
    # when a job is created with OpenAI's hyperparameters and glmft's extra fields, evaluating
    # (generation, ROUGE and BLEU) at each checkpoint
    evaluated = {
        **TINY_OVERRIDES,
        "training_args.eval_strategy": "steps",
        "training_args.eval_steps": 2,
        "training_args.generation_config.max_new_tokens": 4,
    }
    job = oai.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file.id,
        validation_file=dev.id,
        hyperparameters={"batch_size": 2},
        seed=7,
        suffix="oai",
        metadata={"suite": "openai"},
        extra_body=glmft(evaluated),
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert (job.training_file, job.seed, job.hyperparameters.batch_size) == (file.id, 7, 2)
    # then it succeeds and names the adapter as its fine-tuned model
    job = wait_for(lambda: finished(oai, job.id), 300, "the job", every=0.5)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:{MODEL}:oai:{job.id}" and job.error is None
    assert job.finished_at is not None and job.finished_at >= job.created_at
    assert [j.id for j in oai.fine_tuning.jobs.list(metadata={"suite": "openai"})] == [job.id]
    # 4 steps of 2 of the 8 conversations: one pass, every non-pad token counted once
    assert job.trained_tokens == tokens_of_one_epoch(tiny_model_dir, demo_jsonl(8))
    # its events come newest first, and the package pages through them by id
    events = list(oai.fine_tuning.jobs.list_events(job.id, limit=100))
    numbers = [int(e.id.removeprefix("ftevent-")) for e in events]
    assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == len(numbers)
    assert events[0].message == "running -> succeeded: the trainer succeeded"
    assert [e.data.get("state") for e in events[-2:]] == ["running", "queued"]
    steps = [e for e in events if e.type == "metrics" and "loss" in e.data]
    assert [e.data["step"] for e in steps] == [4, 3, 2, 1] and steps[0].level == "info"
    assert len(oai.fine_tuning.jobs.list_events(job.id, limit=3).data) == 3
    checkpoints = oai.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-4"
    metrics = checkpoints[0].metrics.to_dict()
    assert metrics["train_loss"] is not None
    scores = [metrics.get(k) for k in ("valid_rouge_1", "valid_rouge_2", "valid_rouge_l")]
    assert all(score is not None and 0 <= score <= 100 for score in scores), metrics
    assert 0 <= metrics["valid_bleu_4"] <= 1
    assert checkpoints[0].fine_tuning_job_id == job.id
    # and the package chats with the fine-tuned model and with one of its checkpoints
    for model in (job.fine_tuned_model, checkpoints[0].fine_tuned_model_checkpoint):
        answer = oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "类型#裙*颜色#红色"}],
            max_tokens=8,
            temperature=0,
        )
        assert answer.model == model and answer.usage and answer.usage.completion_tokens > 0
        assert answer.choices[0].finish_reason in ("stop", "length")
    # a finished job cannot be cancelled: OpenAI's error shape with glmft's code
    with pytest.raises(openai.ConflictError) as conflict:
        oai.fine_tuning.jobs.cancel(job.id)
    assert conflict.value.code == "invalid_job_transition"
    assert conflict.value.type == "invalid_request_error"


def test_cancel_invalid_files_and_missing_jobs_through_the_openai_package(
    oai: openai.OpenAI, live_service: LiveService
) -> None:
    bad = oai.files.create(
        file=("bad.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n'),
        purpose="fine-tune",
    )
    assert bad.status == "error" and "bad.jsonl:1: " in (bad.status_details or "")
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        oai.fine_tuning.jobs.create(model=MODEL, training_file=bad.id, extra_body=glmft({}))
    assert (refused.value.code, refused.value.param) == ("invalid_dataset", "training_file")
    good = oai.files.create(file=("train.jsonl", demo_jsonl(4)), purpose="fine-tune")
    with pytest.raises(openai.UnprocessableEntityError) as overridden:
        oai.fine_tuning.jobs.create(
            model=MODEL, training_file=good.id, extra_body=glmft({"training_args.bogus": 1})
        )
    assert overridden.value.param == "glmft.overrides.training_args.bogus"
    # a job created as OpenAI's own examples do (no extra_body: the lora preset, default GPUs)
    plain = oai.fine_tuning.jobs.create(model=MODEL, training_file=good.id)
    assert plain.status == "queued" and plain.glmft["gpus"] == 0  # type: ignore[attr-defined]
    assert oai.fine_tuning.jobs.cancel(plain.id).status == "cancelled"  # at once, queued or not
    wait_for(lambda: finished(oai, plain.id), 120, "the cancel")
    states = [
        e.data["state"] for e in oai.fine_tuning.jobs.list_events(plain.id) if "state" in e.data
    ]
    assert states[0] == "cancelled" and states[-1] == "queued", states
    with pytest.raises(openai.NotFoundError) as missing:
        oai.fine_tuning.jobs.retrieve("job-missing")
    assert missing.value.code == "job_not_found" and missing.value.request_id
    stranger = openai.OpenAI(base_url=f"{live_service.base_url}/v1", api_key="sk-no")
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.files.list()
    assert denied.value.type == "authentication_error"


def test_pause_keeps_checkpoints_resume_continues_from_the_newest_and_cancel_is_final(
    oai: openai.OpenAI, live_service: LiveService
) -> None:
    # given a long job that has saved a checkpoint
    good = oai.files.create(file=("train.jsonl", demo_jsonl(4)), purpose="fine-tune")
    long_run = {**LONG_OVERRIDES, "training_args.save_steps": 5}
    job = oai.fine_tuning.jobs.create(
        model=MODEL, training_file=good.id, extra_body=glmft(long_run)
    )
    steps = lambda: [c.step_number for c in oai.fine_tuning.jobs.checkpoints.list(job.id)]  # noqa: E731
    wait_for(steps, 120, "a checkpoint", every=0.3)
    # when it is paused, its trainer stops and the job waits with its checkpoints
    assert oai.fine_tuning.jobs.pause(job.id).status == "paused"
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as native:
        wait_for(lambda: native.jobs.retrieve(job.id).worker is None, 60, "the trainer to stop")
    newest = max(steps())
    # then resume queues it from the newest checkpoint, and it trains on from there
    resumed = oai.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    events = lambda: list(oai.fine_tuning.jobs.list_events(job.id, limit=100))  # noqa: E731
    started = lambda: [e for e in events() if e.data.get("event") == "started"]  # noqa: E731
    wait_for(lambda: len(started()) == 2, 120, "the second start", every=0.3)
    assert started()[0].data["resume_from"].endswith(f"checkpoint-{newest}")
    states = [e.data["state"] for e in reversed(events()) if "state" in e.data]
    assert states == ["queued", "running", "paused", "queued", "running"]
    queued_again = next(e for e in events() if e.data.get("previous") == "paused")
    assert queued_again.message == f"paused -> queued: resumed from checkpoint {newest}"
    # and a cancel answers cancelled at once, in OpenAI's words, while the worker stops it
    cancelled = oai.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.glmft["state"] in ("cancelling", "cancelled")  # type: ignore[attr-defined]
    wait_for(lambda: finished(oai, job.id), 120, "the cancel")
    newest_states = [e.data["state"] for e in events() if "state" in e.data][:2]
    assert newest_states == ["cancelled", "cancelling"]


@pytest.fixture
def keyed(settings: Settings) -> Iterator[TestClient]:
    """The app over the test store with one API key (``sk-1``)."""
    app = create_app(settings.model_copy(update={"api_keys": {"sk-1": "t1"}}))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = "Bearer sk-1"
        yield test_client


def test_errors_take_openai_shape_on_the_v1_fine_tuning_routes_only(keyed: TestClient) -> None:
    # OpenAI's shape: message, type, param, code; the request id stays in the header
    missing = keyed.post("/v1/fine_tuning/jobs", json={"model": MODEL})
    assert missing.status_code == 422 and missing.headers["X-Request-ID"]
    assert missing.json() == {
        "error": {
            "message": "training_file: Field required",
            "type": "invalid_request_error",
            "param": "training_file",
            "code": "invalid_request",
        }
    }
    purpose = keyed.post(
        "/v1/files", files={"file": ("t.jsonl", valid_jsonl())}, data={"purpose": "batch"}
    )
    assert purpose.json()["error"]["param"] == "purpose"
    unknown = keyed.get("/v1/files/ds-missing").json()["error"]
    assert (unknown["code"], unknown["param"]) == ("dataset_not_found", "file_id")
    anonymous = keyed.get("/v1/files", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    # the native routes keep glmft's envelope
    native = keyed.get("/jobs/job-missing").json()
    assert native["error"]["code"] == "job_not_found" and "request_id" in native
    assert "type" not in native["error"]


def test_hyperparameters_map_onto_the_config(keyed: TestClient) -> None:
    training_file = dataset_id(keyed)
    body = {
        "model": MODEL,
        "training_file": training_file,
        "method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 2}},
        },
        "glmft": {"config": "tiny/lora", "gpus": 2, "overrides": {"training_args.seed": 3}},
    }
    response = keyed.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 200, response.text
    job = response.json()
    args = keyed.get(f"/jobs/{job['id']}").json()["config"]["training_args"]
    assert (args["num_train_epochs"], args["max_steps"], args["learning_rate"]) == (2, -1, 0.01)
    assert job["hyperparameters"]["n_epochs"] == 2 and job["seed"] == 3
    assert job["glmft"] == {
        "method": "lora",
        "state": "queued",
        "step": 0,
        "max_steps": None,
        "gpus": 2,
    }
    again = keyed.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert again.json()["id"] == job["id"]
    odd = {**body, "hyperparameters": {"batch_size": 3}, "method": None}
    refused = keyed.post("/v1/fine_tuning/jobs", json=odd).json()["error"]
    assert refused["param"] == "hyperparameters.batch_size"
    assert refused["code"] == "invalid_request"
