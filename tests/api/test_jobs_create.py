"""POST /jobs: validation in the request, idempotency, and the real Redis queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from api.main import create_app
from core.models import WorkerNode, utcnow
from core.settings import Settings
from tests.api.helpers import (
    REPO,
    assert_error,
    create_job,
    dataset_id,
    queued_job_ids,
    upload,
    valid_jsonl,
)
from trainer.contract.run_config import SHIPPED_DEEPSPEED


def test_create_queues_the_job_and_enqueues_it_once(
    client: TestClient, broker: redis.Redis, settings: Settings
) -> None:
    train = dataset_id(client)
    val = upload(client, valid_jsonl(), filename="dev.jsonl").json()["id"]
    response = create_job(
        client,
        train,
        validation_dataset=val,
        overrides={"training_args.max_steps": 20},
        seed=7,
        suffix="support-bot",
        metadata={"team": "a"},
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued"
    assert job["queue_position"] == 0
    assert job["max_steps"] == 20 and job["progress"] == 0.0
    config = job["config"]
    assert config["training_args"]["max_steps"] == 20
    assert config["training_args"]["seed"] == 7
    assert config["peft_config"]["peft_type"] == "LORA"
    # the files are the job directory's (the run contract): no storage path of the service
    assert config["data_config"]["train_file"] == "train.jsonl"
    assert config["data_config"]["val_file"] == "dev.jsonl"
    assert str(settings.artifacts) not in response.text
    assert queued_job_ids(broker) == [job["id"]]
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "queued"


def test_same_idempotency_key_twice_gives_one_job_one_message(
    client: TestClient, broker: redis.Redis
) -> None:
    ds = dataset_id(client)
    first = create_job(client, ds, key="ci-run-1")
    second = create_job(client, ds, key="ci-run-1")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert queued_job_ids(broker) == [first.json()["id"]]
    other = create_job(client, ds, key="ci-run-1", gpus=0, seed=3)
    error = assert_error(other, 409, "idempotency_key_reused", "Idempotency-Key")
    assert error["details"]["job_id"] == first.json()["id"]
    assert len(client.get("/jobs").json()["data"]) == 1


def test_a_request_that_loses_the_insert_to_the_same_key_answers_the_winners_job(
    client: TestClient, broker: redis.Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key pass the replay lookup together; the second to insert hits
    the key's unique index, and answers with the job the first one made (200)."""
    from api.schemas.jobs import JobCreate
    from api.services import jobs as service
    from tests.api.helpers import job_body

    ds = dataset_id(client)
    real_enter_queue = service.enter_queue
    winner: list[str] = []
    raced: list[bool] = []

    def enter_queue_then_lose_the_race(*args: Any, **kwargs: Any) -> None:
        real_enter_queue(*args, **kwargs)
        if raced:  # the other request's own admission
            return
        raced.append(True)
        with Session(client.app.state.engine, expire_on_commit=False) as other:  # type: ignore[attr-defined]
            job, created = service.create_job(
                session=other,
                settings=settings,
                enqueuer=client.app.state.enqueuer,  # type: ignore[attr-defined]
                tenant=settings.default_tenant,
                job_in=JobCreate.model_validate(job_body(ds)),
                idempotency_key="raced",
            )
            assert created
            winner.append(job.id)

    monkeypatch.setattr(service, "enter_queue", enter_queue_then_lose_the_race)
    response = create_job(client, ds, key="raced")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == winner[0]
    assert queued_job_ids(broker) == winner
    assert [j["id"] for j in client.get("/jobs").json()["data"]] == winner


def test_unknown_model_is_404(client: TestClient, broker: redis.Redis) -> None:
    error = assert_error(
        create_job(client, dataset_id(client), model="gpt-9"), 404, "model_not_found", "model"
    )
    assert "glm-4-tiny" in error["message"]
    assert queued_job_ids(broker) == []


def test_missing_dataset_is_422(client: TestClient) -> None:
    assert_error(create_job(client, "ds-nope"), 422, "invalid_dataset", "training_dataset")
    ds = dataset_id(client)
    response = create_job(client, ds, validation_dataset="ds-nope")
    assert_error(response, 422, "invalid_dataset", "validation_dataset")


def test_unknown_config_key_names_the_override(client: TestClient) -> None:
    response = create_job(client, dataset_id(client), overrides={"training_args.learning_rat": 1})
    error = assert_error(response, 422, "invalid_config", "overrides.training_args.learning_rat")
    assert "unknown key" in error["message"]
    assert error["details"]["issues"][0]["key"] == "training_args.learning_rat"


def test_speed_switches_are_accepted_and_a_bad_budget_named(client: TestClient) -> None:
    ds = dataset_id(client)
    switches = {"packing": True, "chunked_loss": True, "memory_budget_gib": 20, "compile": True}
    response = create_job(client, ds, overrides=switches)
    assert response.status_code == 201, response.text
    assert {k: response.json()["config"][k] for k in switches} == switches
    response = create_job(client, ds, overrides={"memory_budget_gib": -1})
    error = assert_error(response, 422, "invalid_config", "overrides.memory_budget_gib")
    assert "must be positive" in error["message"]


def test_tensorboard_reporting_is_accepted_and_other_integrations_named(client: TestClient) -> None:
    ds = dataset_id(client)
    response = create_job(client, ds, overrides={"training_args.report_to": "tensorboard"})
    assert response.status_code == 201, response.text
    assert response.json()["config"]["training_args"]["report_to"] == "tensorboard"
    refused = create_job(client, ds, overrides={"training_args.report_to": "wandb"})
    error = assert_error(refused, 422, "invalid_config", "overrides.training_args.report_to")
    assert "'wandb' is not supported" in error["message"] and "tensorboard" in error["message"]


def test_compile_under_every_shipped_deepspeed_config_is_accepted(client: TestClient) -> None:
    # under ZeRO-3 the trainer compiles the layers' elementwise functions (trainer.compile)
    for deepspeed in ("configs/ds_zero_2.json", "configs/ds_zero_3.json"):
        overrides = {"compile": True, "training_args.deepspeed": deepspeed}
        response = create_job(client, dataset_id(client), overrides=overrides)
        assert response.status_code == 201, response.text
        assert response.json()["config"]["compile"] is True


def test_method_conflicting_with_the_config(client: TestClient) -> None:
    response = create_job(client, dataset_id(client), method="ptuning_v2", config="tiny/lora")
    error = assert_error(response, 422, "invalid_config", "method")
    assert "ptuning_v2" in error["message"] and "lora" in error["message"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("configs/ds_zero_3.json", True),
        ("ds_zero_2.json", True),
        ("configs/ds_zero_3_offload.json", True),
        ("/etc/ds_zero_3.json", False),
        ("../configs/ds_zero_3.json", False),
        ("configs/my_ds.json", False),
    ],
)
def test_only_shipped_deepspeed_configs(client: TestClient, value: str, ok: bool) -> None:
    response = create_job(client, dataset_id(client), overrides={"training_args.deepspeed": value})
    if ok:
        assert response.status_code == 201, response.text
        # stored by its shipped name, which the trainer finds in its own install
        name = response.json()["config"]["training_args"]["deepspeed"]
        assert name == value.removeprefix("configs/") and name in SHIPPED_DEEPSPEED
    else:
        error = assert_error(response, 422, "invalid_config", "overrides.training_args.deepspeed")
        assert "configs/ds_zero_2.json" in error["message"]


@pytest.mark.parametrize("path", ["/var/out", "../../elsewhere", "~/out"])
def test_output_paths_stay_in_the_job_dir(client: TestClient, path: str) -> None:
    response = create_job(client, dataset_id(client), overrides={"training_args.output_dir": path})
    assert_error(response, 422, "invalid_config", "overrides.training_args.output_dir")
    yaml_doc = "data_config: {}\nmax_input_length: 8\nmax_output_length: 8\ncombine: true\n"
    yaml_doc += f"freezeV: true\ntraining_args:\n  logging_dir: {path}\n"
    response = create_job(client, dataset_id(client), method="sft", config=yaml_doc)
    assert_error(response, 422, "invalid_config", "config.training_args.logging_dir")


def test_yaml_document_config_and_relative_output_dir(client: TestClient) -> None:
    yaml_doc = (
        "max_input_length: 64\nmax_output_length: 32\ncombine: true\nfreezeV: true\n"
        "training_args:\n  output_dir: ./out/run\n  max_steps: 5\n  learning_rate: 5e-4\n"
    )
    response = create_job(client, dataset_id(client), method="sft", config=yaml_doc)
    assert response.status_code == 201, response.text
    config = response.json()["config"]
    assert config["peft_config"] is None
    assert config["training_args"]["learning_rate"] == 5e-4


def test_unknown_preset_and_data_config_override(client: TestClient) -> None:
    ds = dataset_id(client)
    error = assert_error(
        create_job(client, ds, config="tiny/nope"), 422, "invalid_config", "config"
    )
    assert "tiny/lora" in error["details"]["presets"]
    response = create_job(client, ds, overrides={"data_config.train_file": "/etc/passwd"})
    assert_error(response, 422, "invalid_config", "overrides.data_config.train_file")


def test_seed_conflicting_with_overrides(client: TestClient) -> None:
    response = create_job(client, dataset_id(client), seed=1, overrides={"training_args.seed": 2})
    assert_error(response, 422, "invalid_config", "seed")


def test_request_body_errors_name_the_field(client: TestClient) -> None:
    ds = dataset_id(client)
    assert_error(create_job(client, ds, gpus=-1), 422, "invalid_request", "gpus")
    assert_error(create_job(client, ds, method="qlora"), 422, "invalid_request", "method")
    assert_error(create_job(client, ds, colour="red"), 422, "invalid_request", "colour")
    assert_error(create_job(client, ds, suffix="Bad:Suffix"), 422, "invalid_request", "suffix")


def _worker(engine: Engine, name: str, gpus: list[int], age_s: float) -> None:
    with Session(engine) as session:
        seen = utcnow() - timedelta(seconds=age_s)
        session.add(WorkerNode(name=name, gpus=gpus, queues=["training"], last_seen=seen))
        session.commit()


def test_capacity_is_checked_against_online_workers(
    client: TestClient, engine: Engine, broker: redis.Redis
) -> None:
    ds = dataset_id(client)
    # no worker known: anything up to the per-job limit is accepted
    assert create_job(client, ds, gpus=4).status_code == 201
    assert_error(create_job(client, ds, gpus=9), 422, "insufficient_capacity", "gpus")
    _worker(engine, "node-a", [0, 1], age_s=1)
    _worker(engine, "node-b", [0, 1, 2, 3, 4, 5, 6, 7], age_s=3600)  # offline
    error = assert_error(create_job(client, ds, gpus=4), 422, "insufficient_capacity", "gpus")
    assert "2 GPU" in error["message"] and error["details"]["max_gpus"] == 2
    assert create_job(client, ds, gpus=2).status_code == 201
    assert create_job(client, ds, gpus=0).status_code == 201
    assert len(queued_job_ids(broker)) == 3


def test_gpus_default_from_the_registry_entry_then_the_fleet(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    ds = dataset_id(client)
    # no worker known, or only CPU workers online: the job trains on CPU
    assert create_job(client, ds, gpus=None).json()["gpus"] == 0
    _worker(engine, "cpu-node", [], age_s=1)
    assert create_job(client, ds, gpus=None).json()["gpus"] == 0
    # a worker with GPUs online: one GPU
    _worker(engine, "gpu-node", [0, 1], age_s=1)
    assert create_job(client, ds, gpus=None).json()["gpus"] == 1
    # an entry that says how many wins over the fleet
    entry = settings.models["glm-4-tiny"].model_copy(update={"gpus": 0})
    app = create_app(settings.model_copy(update={"models": {"glm-4-tiny": entry}}))
    with TestClient(app, raise_server_exceptions=False) as other:
        assert create_job(other, ds, gpus=None).json()["gpus"] == 0


def test_check_answers_before_any_upload_and_stores_nothing(
    client: TestClient, engine: Engine, broker: redis.Redis
) -> None:
    spec = {"model": "glm-4-tiny", "method": "ptuning_v2", "config": "tiny/ptuning_v2"}
    checked = client.post("/jobs/check", json=spec)
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert (body["object"], body["gpus"], body["max_steps"]) == ("job.check", 0, 60)
    # the tiny preset leaves the prefix shape to the model: 2 KV heads of 16 (hidden 64)
    prefix = body["config"]["peft_config"]
    assert (prefix["num_attention_heads"], prefix["token_dim"]) == (2, 32)
    assert any("token_dim: 32" in note for note in body["notes"])
    assert_error(
        client.post("/jobs/check", json={**spec, "model": "gpt-9"}), 404, "model_not_found"
    )
    _worker(engine, "node-a", [0], age_s=1)
    refused = client.post("/jobs/check", json={**spec, "gpus": 2})
    assert_error(refused, 422, "insufficient_capacity", "gpus")
    assert client.get("/jobs").json()["data"] == [] and queued_job_ids(broker) == []


def test_model_dependent_config_checks_run_at_admission(client: TestClient) -> None:
    ds = dataset_id(client)
    # a prefix shaped for another model is refused naming the value this model needs
    shape = {"peft_config.token_dim": 64, "peft_config.num_attention_heads": 2}
    response = create_job(
        client, ds, method="ptuning_v2", config="tiny/ptuning_v2", overrides=shape
    )
    error = assert_error(response, 422, "invalid_config", "overrides.peft_config.token_dim")
    assert "= 32" in error["message"] and "got 64" in error["message"]
    # the shipped preset fits the model it runs on, and the job says what was filled in
    job = create_job(client, ds, method="ptuning_v2", config="tiny/ptuning_v2").json()
    assert job["config"]["peft_config"]["token_dim"] == 32
    created = client.get(f"/jobs/{job['id']}/events").json()["data"][0]
    assert created["kind"] == "queued" and any("token_dim" in n for n in created["data"]["notes"])


def _upstream_lora(targets: str) -> str:
    """The upstream demo's lora.yaml, verbatim but for its LoRA targets."""
    text = (REPO / "configs" / "lora.yaml").read_text(encoding="utf-8")
    return text.replace(
        'target_modules: ["q_proj", "k_proj", "v_proj"]', f"target_modules: {targets}"
    )


def test_upstream_lora_targets_map_to_native_modules_or_say_what_to_write(
    client: TestClient,
) -> None:
    ds = dataset_id(client)
    job = create_job(client, ds, config=_upstream_lora('["query_key_value"]')).json()
    assert job["config"]["peft_config"]["target_modules"] == ["q_proj", "k_proj", "v_proj"]
    for targets, hint in (('["dense_h_to_4h"]', "write gate_up_proj"), ('["qkv"]', "'qkv'")):
        response = create_job(client, ds, config=_upstream_lora(targets))
        error = assert_error(response, 422, "invalid_config", "config.peft_config.target_modules")
        assert hint in error["message"] and "q_proj, k_proj, v_proj, o_proj" in error["message"]
