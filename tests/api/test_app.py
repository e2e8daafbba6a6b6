"""App-wide behaviour: the error envelope, probes, Prometheus metrics, API keys, OpenAPI."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.main import create_app
from core.settings import Settings
from tests.api.helpers import (
    assert_error,
    create_job,
    dataset_id,
    set_job,
    upload,
    valid_jsonl,
)


def test_envelope_on_404_422_and_500(client: TestClient) -> None:
    error = assert_error(client.get("/nowhere"), 404, "not_found")
    assert "/nowhere" in error["message"]
    assert_error(client.get("/jobs/job-missing"), 404, "job_not_found", "job_id")
    assert_error(client.get("/jobs", params={"limit": 0}), 422, "invalid_request", "limit")
    assert_error(client.post("/jobs", content=b"{"), 422, "invalid_request")
    assert_error(client.delete("/jobs"), 405, "method_not_allowed")

    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    response = client.get("/boom")
    assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "Traceback" not in response.text


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "ci-123"})
    assert response.headers["x-request-id"] == "ci-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert (
        made.headers["x-request-id"] != "bad id; drop" and len(made.headers["x-request-id"]) == 32
    )


def test_probes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nope",
        broker_url="redis://127.0.0.1:1/0",
        allow_anonymous=True,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        error = assert_error(client.get("/readyz"), 503, "unavailable")
        assert error["details"]["checks"]["database"].startswith("error")
        assert error["details"]["checks"]["broker"].startswith("error")
        assert_error(client.get("/jobs"), 503, "unavailable")


def test_prometheus_metrics(client: TestClient) -> None:
    create_job(client, dataset_id(client))
    client.get("/jobs/job-missing")
    text = client.get("/metrics").text
    assert 'glmft_http_requests_total{method="POST",route="/jobs",status="201"} 1.0' in text
    assert 'route="/jobs/{job_id}",status="404"' in text
    assert 'glmft_jobs{state="queued"} 1.0' in text
    assert "glmft_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_api_keys_map_callers_to_tenants(settings: Settings) -> None:
    keys = {"key-a": "team-a", "key-b": "team-b"}
    keyed = settings.model_copy(update={"api_keys": keys, "allow_anonymous": False})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        response = client.get("/jobs")
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert_error(
            client.get("/jobs", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
        )
        a, b = {"Authorization": "Bearer key-a"}, {"Authorization": "Bearer key-b"}
        ds = upload(client, valid_jsonl(), headers=a).json()["id"]
        assert client.get(f"/datasets/{ds}", headers=a).status_code == 200
        assert_error(client.get(f"/datasets/{ds}", headers=b), 404, "dataset_not_found")
        job = client.post(
            "/jobs",
            json={"model": "glm-4-tiny", "method": "lora", "training_dataset": ds, "gpus": 0},
            headers=b,
        )
        assert_error(job, 422, "invalid_dataset", "training_dataset")
        assert client.get("/jobs", headers=a).status_code == 200


def test_openapi_documents_models_errors_and_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"JobCreate", "JobPublic", "DatasetWithReport", "ErrorEnvelope"} <= set(schemas)
    assert schemas["JobCreate"].get("examples")
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("description") or operation.get("summary"), (method, path)
            assert (
                "200" in operation["responses"]
                or "201" in operation["responses"]
                or "204" in operation["responses"]
            )
    post = spec["paths"]["/jobs"]["post"]["responses"]
    assert post["409"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorEnvelope")
    assert "multipart/form-data" in spec["paths"]["/datasets"]["post"]["requestBody"]["content"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_unreachable_broker_withdraws_or_fails_the_job(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    failed = create_job(client, dataset_id(client)).json()["id"]
    set_job(engine, failed, state="failed", error_code="oom", error_message="x")
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False) as other:
        ds = dataset_id(other)
        assert_error(create_job(other, ds, key="k1"), 503, "unavailable")
        assert [j["id"] for j in other.get("/jobs").json()["data"]] == [failed]  # withdrawn
        assert_error(other.post(f"/jobs/{failed}/resume"), 503, "unavailable")
        job = other.get(f"/jobs/{failed}").json()
        assert job["state"] == "failed" and job["error"]["code"] == "enqueue_failed"
        assert job["error"]["user_error"] is False
