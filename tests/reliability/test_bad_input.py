"""Ordinary bad input gets a 4xx, never a 5xx, against PostgreSQL: NUL characters anywhere a
route reads a string, integers beyond the SQL columns, deep nesting, YAML alias bombs, huge
strings, path-valued training arguments and non-finite numbers, all refused at admission."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, func, select

from api.main import create_app
from core.models import Job
from core.settings import BaseModelEntry, Settings
from tests.reliability.services import (
    MODEL,
    REPO,
    PostgresCluster,
    RedisServer,
    job_body,
    upload_dataset,
)

#: 634 bytes of YAML that expand to 9^6 strings (a "billion laughs")
ALIAS_BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""


@pytest.fixture(scope="module")
def client(
    pg_cluster: PostgresCluster, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """One app for the module (a database and a broker of its own)."""
    root = tmp_path_factory.mktemp("bad_input")
    database_url = pg_cluster.create_database(f"glmft_{uuid.uuid4().hex[:10]}")
    broker = RedisServer(root)
    broker.start()
    settings = Settings(
        home=root / "home",
        database_url=database_url,
        broker_url=broker.url(),
        models={MODEL: BaseModelEntry(path=tiny_model_dir)},
        allow_anonymous=True,  # the local mode: every caller is the default tenant
    )
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        broker.stop()


def _jobs(client: TestClient) -> int:
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        return int(session.exec(select(func.count()).select_from(Job)).one())


def _operations(client: TestClient) -> list[tuple[str, str, list[str]]]:
    """Every documented operation: method, path and its query parameters."""
    doc = client.get("/openapi.json").json()
    return [
        (method.upper(), path, [p["name"] for p in op.get("parameters", []) if p["in"] == "query"])
        for path, item in doc["paths"].items()
        for method, op in item.items()
    ]


def test_a_nul_in_any_path_parameter_is_refused(client: TestClient) -> None:
    answers = {}
    for method, path, _ in _operations(client):
        if "{" not in path:
            continue
        url = re.sub(r"\{[^}]+\}", "x%00y", path)
        answers[f"{method} {path}"] = client.request(method, url).status_code
    assert len(answers) > 15 and set(answers.values()) == {422}, answers


def test_a_nul_in_any_query_parameter_is_refused(client: TestClient) -> None:
    answers = {}
    for method, path, query in _operations(client):
        url = re.sub(r"\{[^}]+\}", "job-0", path)
        for name in query:
            response = client.request(method, url, params={name: "a\x00"})
            answers[f"{method} {path}?{name}"] = response.status_code
    answers["GET /v1/fine_tuning/jobs?after"] = client.get(
        "/v1/fine_tuning/jobs?after=a%00"
    ).status_code
    answers["GET /jobs?metadata.team"] = client.get("/jobs?metadata.team=a%00").status_code
    assert len(answers) > 10 and set(answers.values()) == {422}, answers


def test_a_nul_in_a_body_or_form_field_is_refused(client: TestClient) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    body = {**job_body(dataset), "model": "glm\x00"}
    assert client.post("/jobs", json=body).status_code == 422
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi\x00"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 422
    rows = (REPO / "trainer" / "assets" / "demo" / "train.jsonl").read_bytes()
    upload = client.post(
        "/datasets", files={"file": ("t.jsonl", rows)}, data={"model": "glm\x00tiny"}
    )
    assert upload.status_code == 422 and upload.json()["error"]["param"] == "model"
    assert _jobs(client) == jobs_before


@pytest.mark.parametrize(
    ("change", "param"),
    [
        (
            {"overrides": {"training_args.max_steps": 2147483648}},
            "overrides.training_args.max_steps",
        ),
        ({"seed": 1099511627776}, "seed"),
        ({"overrides": {"training_args.seed": 1099511627776}}, "overrides.training_args.seed"),
        ({"gpus": 1 << 40}, "gpus"),
    ],
    ids=["max_steps", "seed", "training_args.seed", "gpus"],
)
def test_integers_beyond_the_sql_columns_are_refused(
    client: TestClient, change: dict[str, Any], param: str
) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    body = job_body(dataset)
    body.update({k: {**body[k], **v} if k == "overrides" else v for k, v in change.items()})
    response = client.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    assert _jobs(client) == jobs_before


def test_integers_beyond_the_sql_columns_in_paths_and_queries_are_refused(
    client: TestClient,
) -> None:
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    job = client.post("/jobs", json=job_body(dataset)).json()["id"]
    huge = 1 << 70
    answers = [
        client.get(f"/jobs/{job}/events", params={"after": huge}).status_code,
        client.get(f"/jobs/{job}/metrics", params={"after": huge}).status_code,
        client.post(f"/jobs/{job}/checkpoints/{huge}/promote").status_code,
        client.post(f"/jobs/{job}/resume", json={"checkpoint_step": huge}).status_code,
    ]
    assert answers == [422, 422, 422, 422]  # ids and steps are SQL integers


def test_deep_nesting_is_refused(client: TestClient) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    nested: Any = 1
    for _ in range(500):
        nested = {"a": nested}
    body = job_body(dataset)
    body["overrides"]["training_args.lr_scheduler_kwargs"] = nested
    response = client.post("/jobs", json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "overrides"
    deep_yaml = "x:\n  " + "[" * 5000 + "]" * 5000 + "\n"
    assert client.post("/jobs", json={**job_body(dataset), "config": deep_yaml}).status_code == 422
    assert _jobs(client) == jobs_before


def test_a_yaml_alias_bomb_is_refused_not_expanded(client: TestClient) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    preset = (REPO / "configs" / "tiny" / "lora.yaml").read_text()
    assert len(ALIAS_BOMB.encode()) <= 634
    config = preset.replace("training_args:\n", ALIAS_BOMB + "training_args:\n  label_names: *f\n")
    response = client.post("/jobs", json={**job_body(dataset), "config": config})
    assert response.status_code == 422, response.text
    assert "YAML aliases" in response.json()["error"]["message"]
    assert _jobs(client) == jobs_before


def test_huge_strings_are_refused(client: TestClient) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    body = job_body(dataset)
    body["overrides"]["training_args.run_name"] = "r" * 200_000
    response = client.post("/jobs", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "overrides.training_args.run_name"
    body["overrides"]["training_args.run_name"] = "r" * (2 << 20)  # beyond any request body
    response = client.post("/jobs", json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    long_model = {**job_body(dataset), "model": "m" * 100_000}
    assert client.post("/jobs", json=long_model).status_code == 422
    assert _jobs(client) == jobs_before


@pytest.mark.parametrize(
    ("override", "value"),
    [
        ("training_args.accelerator_config", "/etc/passwd"),
        ("training_args.fsdp_config", "/etc/passwd"),
        ("training_args.learning_rate", float("nan")),
        ("training_args.save_steps", 1),  # with max_steps 1000000: 10^6 checkpoints
        ("training_args.save_total_limit", 0),
        ("training_args.eval_strategy", "sometimes"),
        ("training_args.tf32", True),  # the job has gpus 0
    ],
    ids=[
        "accelerator_config",
        "fsdp_config",
        "nan",
        "checkpoints",
        "save_total_limit",
        "enum",
        "gpu_only",
    ],
)
def test_what_the_trainer_would_refuse_is_refused_at_admission(
    client: TestClient, override: str, value: Any
) -> None:
    jobs_before = _jobs(client)
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    body = job_body(dataset, **{override: value})
    if override == "training_args.save_steps":
        body["overrides"]["training_args.max_steps"] = 1_000_000
    response = client.post(
        "/jobs",
        content=_json_allowing_nan(body),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_config"
    assert response.json()["error"]["param"] == f"overrides.{override}"
    assert _jobs(client) == jobs_before


def test_an_infinite_learning_rate_in_yaml_is_refused(client: TestClient) -> None:
    dataset = upload_dataset(client)  # type: ignore[arg-type]
    preset = (REPO / "configs" / "tiny" / "lora.yaml").read_text()
    config = preset.replace("learning_rate: 5e-3", "learning_rate: .inf")
    response = client.post("/jobs", json={**job_body(dataset), "config": config})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "config.training_args.learning_rate"


def _json_allowing_nan(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()  # NaN as the bare literal Python's parser accepts


def test_a_chat_image_may_be_large_where_text_may_not(client: TestClient) -> None:
    image = "data:image/png;base64," + "A" * (3 << 20)  # 3 MiB: over the 1 MiB of other bodies
    part = {"type": "image_url", "image_url": {"url": image}}
    message = {"role": "user", "content": [{"type": "text", "text": "这是什么"}, part]}
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [message]})
    assert response.status_code == 422  # past the guard: the tiny base is no vision model
    assert response.json()["error"]["code"] == "invalid_messages"
    text = {"model": MODEL, "messages": [{"role": "user", "content": "字" * 1_000_000}]}
    response = client.post("/chat", json=text)
    assert response.status_code == 422 and response.json()["error"]["code"] == "prompt_too_long"
