"""POST /jobs: validation in the request, idempotency, and the real Redis queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from core.models import WorkerNode, utcnow
from tests.api.helpers import assert_error, create_job, dataset_id, queued_job_ids


def test_create_queues_the_job_and_enqueues_it_once(
    client: TestClient, broker: redis.Redis
) -> None:
    train, val = dataset_id(client), dataset_id(client)
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
    assert config["data_config"]["train_file"].endswith(f"{train}/train.jsonl")
    assert config["data_config"]["val_file"].endswith(f"{val}/train.jsonl")
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
        assert response.json()["config"]["training_args"]["deepspeed"].startswith(
            "configs/ds_zero_"
        )
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
