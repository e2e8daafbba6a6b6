"""Dataset uploads: streamed to the artifact root, validated, line-numbered reports, limits."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from core.settings import Settings
from tests.api.helpers import (
    assert_error,
    create_job,
    dataset_id,
    invalid_jsonl,
    set_job,
    upload,
    valid_jsonl,
)


def test_valid_upload_is_stored_hashed_and_reported(client: TestClient, settings: Settings) -> None:
    content = valid_jsonl(5)
    response = upload(client, content)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["valid"] is True
    assert body["conversations"] == 5
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["report"]["errors"] == []
    stored = settings.artifacts / "datasets" / "default" / body["id"] / "train.jsonl"
    assert stored.read_bytes() == content
    assert client.get(f"/datasets/{body['id']}").json()["sha256"] == body["sha256"]


def test_upload_with_model_adds_token_stats(client: TestClient) -> None:
    response = upload(client, valid_jsonl(3), model="glm-4-tiny")
    assert response.status_code == 201, response.text
    stats = response.json()["report"]["stats"]
    assert stats["tokens"]["count"] == 3
    assert stats["max_length"] == 1025
    assert response.json()["base_model"] == "glm-4-tiny"


def test_upload_with_unknown_model_is_refused_and_not_kept(
    client: TestClient, settings: Settings
) -> None:
    assert_error(upload(client, valid_jsonl(), model="nope"), 404, "model_not_found", "model")
    assert not [p for p in settings.artifacts.rglob("*") if p.is_file()]


def test_invalid_upload_reports_the_lines_and_cannot_train(
    client: TestClient, settings: Settings
) -> None:
    response = upload(client, invalid_jsonl(), filename="support-chats.jsonl")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["valid"] is False
    errors = {(e["line"], e["code"]) for e in body["report"]["errors"]}
    assert (2, "role_invalid") in errors
    assert (3, "invalid_json") in errors
    assert (4, "no_assistant_content") in errors
    assert not any(line == 1 for line, _ in errors)
    # issues name the file as uploaded; the service's storage path stays inside it
    assert {e["file"] for e in body["report"]["errors"]} == {"support-chats.jsonl"}
    assert str(settings.artifacts) not in response.text
    assert body["error_count"] == len(body["report"]["errors"])
    report = client.get(f"/datasets/{body['id']}/report").json()
    assert report["errors"] == body["report"]["errors"]
    error = assert_error(create_job(client, body["id"]), 422, "invalid_dataset", "training_dataset")
    assert "invalid" in error["message"]


@pytest.mark.parametrize("size", [5000, 200_000], ids=["while-streaming", "by-content-length"])
def test_oversize_upload_is_413_and_leaves_nothing(
    settings: Settings, client: TestClient, size: int
) -> None:
    settings.limits.max_upload_bytes = 1000
    content = (valid_jsonl(59) * 20)[:size]
    assert_error(upload(client, content), 413, "payload_too_large")
    assert not [p for p in settings.artifacts.rglob("*") if p.is_file()]
    assert client.get("/datasets").json()["data"] == []


def test_unsafe_file_names_are_refused(client: TestClient) -> None:
    assert_error(upload(client, valid_jsonl(), filename="data.csv"), 422, "invalid_request", "file")
    traversal = upload(client, valid_jsonl(), filename="../../x.jsonl")
    assert traversal.status_code == 201, traversal.text
    assert traversal.json()["filename"] == "x.jsonl"  # only the base name is kept


def test_not_multipart_is_refused(client: TestClient) -> None:
    response = client.post("/datasets", json={"file": "x"})
    assert_error(response, 422, "invalid_request", "file")


def test_list_newest_first_with_cursor(client: TestClient) -> None:
    ids = [dataset_id(client) for _ in range(3)]
    first = client.get("/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = client.get("/datasets", params={"limit": 2, "after": first["next_cursor"]}).json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    assert second["next_cursor"] is None


def test_delete_refuses_while_a_job_uses_it_then_tombstones(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    ds = dataset_id(client)
    job = create_job(client, ds).json()
    error = assert_error(client.delete(f"/datasets/{ds}"), 409, "dataset_in_use", "dataset_id")
    assert error["details"]["jobs"] == [job["id"]] and "queued" in error["message"]
    # a failed job could still resume on it: refused too, unless forced
    set_job(engine, job["id"], state="failed", error_code="x", error_message="boom")
    error = assert_error(client.delete(f"/datasets/{ds}"), 409, "dataset_in_use", "dataset_id")
    assert "force=true" in error["message"] and error["details"]["jobs"] == [job["id"]]
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "failed"
    assert client.delete(f"/datasets/{ds}", params={"force": "true"}).status_code == 204
    assert not (settings.artifacts / "datasets" / "default" / ds).exists()
    assert_error(client.get(f"/datasets/{ds}"), 404, "dataset_not_found")
    assert client.get("/datasets").json()["data"] == []
    # the failed job cannot resume without its data
    resumed = client.post(f"/jobs/{job['id']}/resume")
    assert_error(resumed, 422, "invalid_dataset", "training_dataset")


def test_a_succeeded_job_does_not_keep_its_dataset_but_a_running_one_even_forced(
    client: TestClient, engine: Engine
) -> None:
    ds, other = dataset_id(client), dataset_id(client)
    done = create_job(client, ds).json()
    set_job(engine, done["id"], state="succeeded")
    running = create_job(client, other).json()
    set_job(engine, running["id"], state="running")
    forced = client.delete(f"/datasets/{other}", params={"force": "true"})
    assert_error(forced, 409, "dataset_in_use", "dataset_id")
    assert client.delete(f"/datasets/{ds}").status_code == 204


def test_delete_unused_dataset_removes_everything(client: TestClient, settings: Settings) -> None:
    ds = dataset_id(client)
    assert client.delete(f"/datasets/{ds}").status_code == 204
    assert_error(client.delete(f"/datasets/{ds}"), 404, "dataset_not_found")
    assert not list(Path(settings.artifacts / "datasets").rglob("*.jsonl"))
