"""Teams through the API (SQLite and PostgreSQL, real Redis): the key lifecycle, scopes and
cross-tenant isolation on every route of the OpenAPI document (so a new route is covered the
day it appears), quotas answering 429 with their figures, per-tenant metrics, tenants."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.main import create_app
from core.keys import create_key
from core.models import Adapter, Checkpoint, Evaluation
from core.settings import Settings, WebhookSettings
from tests.api.helpers import assert_error, job_body, queued_job_ids, upload, valid_jsonl
from tests.vision_data import colour_files, zip_bytes

Headers = dict[str, str]


class Team:
    """The keyed app and a key maker (``core.keys`` on the app's store)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = self.key("ops", "admin")

    def key(self, tenant: str, *scopes: str) -> Headers:
        with Session(self.client.app.state.engine) as session:  # type: ignore[attr-defined]
            _, key = create_key(session, tenant=tenant, scopes=list(scopes))
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def team(settings: Settings) -> Iterator[Team]:
    """The app with keys required (no local mode); webhooks may target loopback."""
    strict = settings.model_copy(
        update={
            "allow_anonymous": False,
            "webhooks": WebhookSettings(allow_private_targets=True),
        }
    )
    with TestClient(create_app(strict), raise_server_exceptions=False) as client:
        yield Team(client)


def operations(client: TestClient) -> list[tuple[str, str, str]]:
    """``(method, path, scope)`` of every operation needing a key, from the OpenAPI document."""
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), path, op["x-glmft-scope"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if "x-glmft-scope" in op
    ]


def call(client: TestClient, method: str, path: str, headers: Headers) -> Any:
    body = {} if method in ("POST", "PATCH") and "/promote" not in path else None
    return client.request(method, path, json=body, headers=headers)


def refused(response: Any, status: int, code: str) -> None:
    """An error in either shape (native envelope, or OpenAI's on /v1) with ``status``, ``code``."""
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def test_a_key_is_made_used_listed_and_revoked(team: Team) -> None:
    client = team.client
    assert_error(client.get("/jobs"), 401, "unauthorized")
    made = client.post(
        "/keys", json={"tenant": "team-a", "scopes": ["write"], "name": "ci"}, headers=team.admin
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert key.startswith("sk-glmft-") and made.json()["prefix"] == key[:17]
    mine = {"Authorization": f"Bearer {key}"}
    assert upload(client, valid_jsonl(), headers=mine).status_code == 201
    assert client.get("/tenant", headers=mine).json()["id"] == "team-a"
    listed = client.get("/keys", params={"tenant": "team-a"}, headers=team.admin)
    assert key not in listed.text  # shown once, never listed
    [row] = listed.json()["data"]
    assert row["scopes"] == ["write"] and row["last_used_at"] is not None
    assert_error(client.get("/keys", headers=mine), 403, "forbidden")
    revoked = client.delete(f"/keys/{row['id']}", headers=team.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    error = assert_error(client.get("/jobs", headers=mine), 401, "unauthorized")
    assert "revoked" in error["message"]
    assert_error(client.delete("/keys/key-nope", headers=team.admin), 404, "key_not_found")


def test_scopes_follow_the_method_on_every_route(team: Team) -> None:
    client = team.client
    reader, writer = team.key("team-a", "read"), team.key("team-a", "write")
    ops = operations(client)
    assert {s for _, _, s in ops} == {"read", "write", "admin"} and len(ops) > 50
    for method, template, scope in ops:
        path = re.sub(r"\{[^}]+\}", "x1", template)
        for headers, allowed in ((reader, {"read"}), (writer, {"read", "write"})):
            response = call(client, method, path, headers)
            if scope in allowed:
                assert response.status_code not in (401, 403), (method, template, response.text)
            else:
                refused(response, 403, "forbidden")
    # nothing a read key tried was made
    assert client.get("/datasets", headers=reader).json()["data"] == []
    assert client.get("/webhooks", headers=reader).json()["data"] == []


def _owned_by_a(team: Team, a: Headers, engine: Any) -> dict[str, str]:
    """One resource of every kind for tenant ``team-a``; its ids by path parameter name."""
    client = team.client
    dataset = upload(client, valid_jsonl(), headers=a).json()["id"]
    job = client.post("/jobs", json=job_body(dataset), headers=a).json()["id"]
    hook = client.post("/webhooks", json={"url": "http://127.0.0.1:9/h"}, headers=a).json()["id"]
    with Session(engine) as session:
        session.add(Checkpoint(job_id=job, tenant_id="team-a", step=2, path="/c", bytes=1))
        adapter = Adapter(
            id=f"ft:glm-4-tiny:lora:{job}",
            tenant_id="team-a",
            job_id=job,
            base_model="glm-4-tiny",
            method="lora",
            path="/c",
        )
        params = {"max_new_tokens": 8, "temperature": 0, "top_p": 1, "repetition_penalty": 1}
        evaluation = Evaluation(
            tenant_id="team-a", state="queued", dataset_id=dataset, params=params
        )
        session.add(adapter)
        session.add(evaluation)
        session.commit()
        ids = {"adapter_id": adapter.id, "evaluation_id": evaluation.id}
    return {
        **ids,
        "dataset_id": dataset,
        "file_id": dataset,
        "job_id": job,
        "step": "2",
        "webhook_id": hook,
    }


def test_another_tenants_ids_answer_404_on_every_route(team: Team) -> None:
    client = team.client
    a, b = team.key("team-a", "write"), team.key("team-b", "write")
    ids = _owned_by_a(team, a, client.app.state.engine)  # type: ignore[attr-defined]
    tried = 0
    for method, template, scope in operations(client):
        names = re.findall(r"\{([^}]+)\}", template)
        if not names:
            continue
        if scope == "admin":  # keys and tenants: B is no admin
            response = call(client, method, template.replace("{", "").replace("}", ""), b)
            refused(response, 403, "forbidden")
            continue
        missing = [n for n in names if n not in ids]
        assert not missing, f"{method} {template}: add an id of tenant A for {missing}"
        path = template
        for name in names:
            path = path.replace(f"{{{name}}}", ids[name])
        response = call(client, method, path, b)
        assert response.status_code == 404, (method, template, response.text)
        # the owner reaches the same route (not a 404 for some other reason)
        if method == "GET":
            assert call(client, method, path, a).status_code == 200, (method, template)
        tried += 1
    assert tried >= 25
    # and nothing of A changed
    assert client.get(f"/datasets/{ids['dataset_id']}", headers=a).status_code == 200
    assert client.get(f"/jobs/{ids['job_id']}", headers=a).json()["state"] == "queued"
    assert client.get(f"/webhooks/{ids['webhook_id']}", headers=a).status_code == 200


def test_quotas_answer_429_with_what_is_used_and_allowed(team: Team) -> None:
    client = team.client
    a = team.key("team-a", "write")
    size = len(valid_jsonl())
    quotas = {"max_queued_jobs": 2, "max_gpus": 1, "max_storage_bytes": size + 10}
    patched = client.patch("/tenants/team-a", json={"quotas": quotas}, headers=team.admin)
    assert patched.status_code == 200, patched.text
    dataset = upload(client, valid_jsonl(), headers=a).json()["id"]
    over = assert_error(upload(client, valid_jsonl(), headers=a), 429, "quota_exceeded", "file")
    assert over["details"]["quota"] == "max_storage_bytes"
    assert (over["details"]["used"], over["details"]["allowed"]) == (size, size + 10)
    assert client.get("/datasets", headers=a).json()["data"][0]["id"] == dataset  # not stored
    assert client.post("/jobs", json=job_body(dataset), headers=a).status_code == 201
    gpus = assert_error(
        client.post("/jobs", json=job_body(dataset, gpus=2), headers=a), 429, "quota_exceeded"
    )
    assert gpus["details"] == {"quota": "max_gpus", "used": 0, "allowed": 1, "requested": 2}
    assert client.post("/jobs", json=job_body(dataset), headers=a).status_code == 201
    queued = assert_error(
        client.post("/jobs", json=job_body(dataset), headers=a), 429, "quota_exceeded"
    )
    expected = {"quota": "max_queued_jobs", "used": 2, "allowed": 2, "requested": 1}
    assert queued["details"] == expected
    # the OpenAI-compatible route says it in OpenAI's shape
    oai = client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "glm-4-tiny", "training_file": dataset, "glmft": {"gpus": 0}},
        headers=a,
    )
    assert oai.status_code == 429 and oai.json()["error"]["type"] == "rate_limit_error"
    mine = client.get("/tenant", headers=a).json()["quotas"]
    assert mine["max_queued_jobs"] == {"used": 2, "allowed": 2}
    assert mine["max_storage_bytes"] == {"used": size, "allowed": size + 10}
    # storage full to the byte: refused before the body is read
    client.patch(
        "/tenants/team-a",
        json={"quotas": {**quotas, "max_storage_bytes": size}},
        headers=team.admin,
    )
    full = assert_error(upload(client, b"x", headers=a), 429, "quota_exceeded")
    assert full["details"]["used"] == full["details"]["allowed"] == size


def test_metrics_show_a_tenant_its_own_jobs_and_an_admin_everything(team: Team) -> None:
    client = team.client
    a, b = team.key("team-a", "write"), team.key("team-b", "read", "write")
    for headers, count in ((a, 2), (b, 1)):
        dataset = upload(client, valid_jsonl(), headers=headers).json()["id"]
        for _ in range(count):
            assert client.post("/jobs", json=job_body(dataset), headers=headers).status_code == 201
    assert_error(client.get("/metrics"), 401, "unauthorized")
    mine = client.get("/metrics", headers=a).text
    assert 'glmft_jobs{state="queued"} 2.0' in mine
    assert "glmft_http_requests" not in mine and "team-b" not in mine
    everything = client.get("/metrics", headers=team.admin).text
    assert 'glmft_jobs{state="queued"} 3.0' in everything
    assert 'glmft_tenant_jobs{state="queued",tenant="team-b"} 1.0' in everything
    assert "glmft_http_requests_total" in everything


def test_tenants_are_listed_and_changed_by_admins(team: Team, broker: redis.Redis) -> None:
    client = team.client
    a, writer = team.key("team-a", "read"), team.key("team-a", "write")
    dataset = upload(client, valid_jsonl(), headers=writer).json()["id"]
    job = client.post("/jobs", json=job_body(dataset), headers=writer).json()["id"]
    assert queued_job_ids(broker) == [job]
    changed = client.patch(
        "/tenants/team-a",
        json={"weight": 3, "name": "Team A", "quotas": {"max_running_jobs": 1, "max_gpus": None}},
        headers=team.admin,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["weight"] == 3 and body["overrides"] == {"max_running_jobs": 1, "max_gpus": None}
    assert body["quotas"]["max_running_jobs"] == {"used": 0, "allowed": 1}
    # new quotas may let waiting jobs start: each queued job of the tenant is woken up
    assert queued_job_ids(broker) == [job, job]
    assert {t["id"] for t in client.get("/tenants", headers=team.admin).json()["data"]} == {
        "ops",
        "team-a",
    }
    bad = client.patch("/tenants/team-a", json={"quotas": {"max_cats": 1}}, headers=team.admin)
    assert_error(bad, 422, "invalid_request", "quotas.max_cats")
    assert_error(client.get("/tenants/nobody", headers=team.admin), 404, "tenant_not_found")
    assert_error(client.patch("/tenants/team-a", json={}, headers=a), 403, "forbidden")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_local_mode_lets_callers_in_without_a_key_as_the_default_tenant(
    client: TestClient, engine: Any
) -> None:
    # the app of the other API tests: allow_anonymous (glmft up on loopback)
    dataset = upload(client, valid_jsonl()).json()["id"]
    job = client.post("/jobs", json=job_body(dataset)).json()
    assert client.get("/tenant").json()["id"] == "default"
    assert client.get("/keys").status_code == 200  # the one local user is its admin
    with Session(engine) as session:
        _, key = create_key(session, tenant="team-a", scopes=["read"])
    keyed = {"Authorization": f"Bearer {key}"}
    assert_error(client.get(f"/jobs/{job['id']}", headers=keyed), 404, "job_not_found")
    # a key it does not know is the local user too (the openai package must send some key)
    assert client.get("/tenant", headers={"Authorization": "Bearer nope"}).json()["id"] == "default"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_archive_counts_unpacked_against_the_storage_quota(team: Team) -> None:
    client = team.client
    a = team.key("team-a", "write")
    files = colour_files()
    files["padding.txt"] = b"0" * 200_000  # compresses to almost nothing
    archive = zip_bytes(files)
    assert len(archive) < 20_000
    quotas = {"max_storage_bytes": 100_000}
    client.patch("/tenants/team-a", json={"quotas": quotas}, headers=team.admin)
    refused = upload(client, archive, filename="colours.zip", headers=a)
    error = assert_error(refused, 429, "quota_exceeded")
    assert error["details"]["requested"] > 200_000 > len(archive)
    assert client.get("/datasets", headers=a).json()["data"] == []
    assert client.get("/tenant", headers=a).json()["quotas"]["max_storage_bytes"]["used"] == 0
