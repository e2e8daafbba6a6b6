"""Teams against the real service: the API under uvicorn with keys required and one Celery
worker (solo, one job at a time), PostgreSQL and Redis, training the tiny GLM-4 on CPU.

Shown here: a key made by ``glmft keys`` and keys made over the API (used, revoked -> 401);
two tenants' jobs interleaved on one worker (one tenant with 20 queued, the other's job starts
next); a webhook receiver on loopback that verifies every signature and gets every event of a
job exactly once although it was down while the job ran and the worker restarted before it
came back; a checkpoint past the storage quota failing its job and keeping the older one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.commands.up import worker_command
from core.db import upgrade
from tests.conftest import postgres_database
from tests.helpers import free_port, redis_url, wait_for
from tests.live_service import LONG_OVERRIDES, MODEL, TINY_OVERRIDES, demo_jsonl
from tests.webhook_receiver import webhook_receiver

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = redis_url(15)
DONE = ("succeeded", "failed", "cancelled")


@dataclass
class Service:
    base_url: str
    env: dict[str, str]
    home: Path
    admin: dict[str, str] = field(default_factory=dict)
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self) -> None:
        log = (self.home / "worker.log").open("ab")
        self.worker = subprocess.Popen(
            worker_command(pool="solo"),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop_worker(self) -> None:
        if self.worker is not None:
            _stop(self.worker)
            self.worker = None

    def http(self, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=headers or {}, timeout=30)

    def key(self, tenant: str, *scopes: str) -> dict[str, str]:
        with self.http(self.admin) as http:
            made = http.post("/keys", json={"tenant": tenant, "scopes": list(scopes) or ["write"]})
        assert made.status_code == 201, made.text
        return {"Authorization": f"Bearer {made.json()['key']}"}


def _stop(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("teams_service")
    redis.Redis.from_url(REDIS_URL).flushdb()
    with postgres_database("glmft_teams") as database_url:
        upgrade(database_url)
        env = {
            **os.environ,
            "GLMFT_HOME": str(home),
            "GLMFT_DATABASE_URL": database_url,
            "GLMFT_BROKER_URL": REDIS_URL,
            f"GLMFT_MODELS__{MODEL}__PATH": str(tiny_model_dir),
            "GLMFT_ALLOW_ANONYMOUS": "false",
            "GLMFT_WORKER_GPUS": "[]",
            "GLMFT_WORKER_NAME": "teams-node",
            "GLMFT_HEARTBEAT_INTERVAL_S": "1",
            "GLMFT_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true",  # the receiver is on loopback
            "GLMFT_WEBHOOKS__RETRY_BASE_S": "0.5",
            "GLMFT_WEBHOOKS__RETRY_MAX_S": "1",
            "GLMFT_WEBHOOKS__POLL_INTERVAL_S": "0.3",
            "GLMFT_WEBHOOKS__MAX_ATTEMPTS": "200",
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, "-m", "trainer.cli", "keys", "create", "--tenant", "ops"]
        made = subprocess.run(
            [*command, "--scopes", "admin", "--name", "tests", "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        admin_key = json.loads(made.stdout)["key"]
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = (home / "api.log").open("ab")
        uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
        api = subprocess.Popen(
            [*uvicorn, "--port", str(port), "--log-level", "warning"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        service = Service(base_url, env, home, {"Authorization": f"Bearer {admin_key}"})
        service.start_worker()
        try:
            wait_for(lambda: _ready(base_url), 120, "the API")
            yield service
        finally:
            service.stop_worker()
            _stop(api)
            log.close()
            redis.Redis.from_url(REDIS_URL).flushdb()


def upload(http: httpx.Client, lines: int = 8, name: str = "train.jsonl") -> str:
    response = http.post(
        "/datasets", files={"file": (name, demo_jsonl(lines), "application/jsonl")}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(http: httpx.Client, dataset: str, overrides: dict[str, Any], **extra: Any) -> str:
    body = {"model": MODEL, "method": "lora", "training_dataset": dataset, "config": "tiny/lora"}
    response = http.post("/jobs", json={**body, "gpus": 0, "overrides": overrides, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def state(http: httpx.Client, job_id: str) -> str:
    return str(http.get(f"/jobs/{job_id}").json()["state"])


def next_running(owners: list[tuple[httpx.Client, str]], seen: list[str]) -> str | None:
    """The first job of ``owners`` (each with its tenant's client) running and not seen."""
    return next((j for h, j in owners if j not in seen and state(h, j) == "running"), None)


def finished(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
    return job if job["state"] in DONE else None


def test_keys_from_the_command_line_and_the_api(service: Service) -> None:
    with service.http() as anonymous:
        assert anonymous.get("/jobs").status_code == 401
    team = service.key("team-a", "read")
    with service.http(team) as http:
        assert http.get("/jobs").status_code == 200
        denied = http.post("/jobs", json={})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    with service.http(service.admin) as admin:
        [row] = admin.get("/keys", params={"tenant": "team-a"}).json()["data"]
        assert row["last_used_at"] is not None
        assert admin.delete(f"/keys/{row['id']}").status_code == 200
    with service.http(team) as http:
        assert http.get("/jobs").status_code == 401


def test_one_tenants_job_is_not_starved_by_another_with_twenty_queued(service: Service) -> None:
    bulk, solo = service.key("bulk"), service.key("solo")
    with service.http(bulk) as b, service.http(solo) as s:
        data = upload(b)
        bulk_jobs = [submit(b, data, LONG_OVERRIDES) for _ in range(20)]
        first = wait_for(
            lambda: next((j for j in bulk_jobs if state(b, j) == "running"), None),
            120,
            "a bulk job to start",
        )
        lone = submit(s, upload(s), LONG_OVERRIDES)
        assert s.get(f"/jobs/{lone}").json()["queue_position"] == 0
        started, current = [first], first
        owners = [(s, lone), *((b, j) for j in bulk_jobs)]
        for _ in range(2):  # the lone job must start within the next two starts
            assert b.post(f"/jobs/{current}/cancel").status_code == 200
            current = wait_for(lambda: next_running(owners, started), 120, "the next start")
            started.append(current)
            if current == lone:
                break
        assert lone in started[1:3], started
        waiting = [j for j in bulk_jobs if state(b, j) == "queued"]
        assert len(waiting) >= 18  # the bulk tenant's backlog was passed, not drained
        assert s.post(f"/jobs/{lone}/cancel").status_code == 200
        for job in bulk_jobs:
            b.post(f"/jobs/{job}/cancel")
        wait_for(lambda: all(state(b, j) in DONE for j in bulk_jobs), 120, "the bulk jobs to end")


def test_webhook_gets_every_event_once_across_a_worker_restart(service: Service) -> None:
    hooks = service.key("hooks")
    with webhook_receiver() as (url, received), service.http(hooks) as http:
        made = http.post("/webhooks", json={"url": url})
        assert made.status_code == 201, made.text
        hook = made.json()
        received.secret, received.status = hook["secret"], 503  # down while the job runs
        train, dev = upload(http), upload(http, 4, "dev.jsonl")
        overrides = {
            **TINY_OVERRIDES,
            "training_args.eval_strategy": "steps",
            "training_args.eval_steps": 4,
            "training_args.generation_config.max_new_tokens": 4,
        }
        job = submit(http, train, overrides, validation_dataset=dev)
        done = wait_for(lambda: finished(http, job), 300, "the job")
        assert done["state"] == "succeeded", done
        wait_for(lambda: len(received.posts) >= 6, 60, "attempts at the receiver")
        service.stop_worker()  # deliveries wait in SQL; nothing sends them now
        log = http.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 100}).json()["data"]
        assert {d["state"] for d in log} == {"pending"} and received.accepted == []
        assert all(a["status_code"] == 503 for d in log for a in d["log"])
        received.status = 200
        service.start_worker()
        expected = {"job.queued", "job.running", "job.checkpoint", "job.eval", "job.succeeded"}

        def all_delivered() -> list[dict[str, Any]] | None:
            rows = http.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 100}).json()
            data: list[dict[str, Any]] = rows["data"]
            return data if all(d["state"] == "delivered" for d in data) else None

        delivered = wait_for(all_delivered, 120, "every delivery")
        assert received.bad_signatures == 0
        ids = received.accepted_ids()
        assert len(ids) == len(set(ids)) == len(delivered)  # each event exactly once
        assert set(ids) == {d["id"] for d in delivered}
        events = sorted(received.events())
        assert set(events) == expected
        assert events.count("job.checkpoint") == 2 and events.count("job.succeeded") == 1
        steps = sorted(
            p["body"]["data"]["checkpoint"]["step"]
            for p in received.accepted
            if p["body"]["type"] == "job.checkpoint"
        )
        assert steps == [2, 4]
        assert all(d["log"][-1]["status_code"] == 200 for d in delivered)


def _checkpoint_bytes(service: Service) -> int:
    """The size of a tiny LoRA checkpoint, from a job of this service (one is run if none)."""
    probe = service.key("probe")
    with service.http(probe) as http:
        job = submit(http, upload(http), {**TINY_OVERRIDES, "training_args.max_steps": 2})
        assert wait_for(lambda: finished(http, job), 300, "the probe job")["state"] == "succeeded"
        return int(http.get(f"/jobs/{job}/checkpoints").json()["data"][0]["bytes"])


def test_a_checkpoint_past_the_storage_quota_fails_the_job_and_keeps_the_older_ones(
    service: Service,
) -> None:
    size = _checkpoint_bytes(service)
    small = service.key("small")
    with service.http(small) as http:
        dataset = upload(http)
        used = http.get("/tenant").json()["quotas"]["max_storage_bytes"]["used"]
        allowed = used + size * 3 // 2  # room for one checkpoint, not two
        with service.http(service.admin) as admin:
            patched = admin.patch("/tenants/small", json={"quotas": {"max_storage_bytes": allowed}})
            assert patched.status_code == 200, patched.text
        overrides = {**TINY_OVERRIDES, "training_args.save_steps": 1}
        job = submit(http, dataset, overrides)
        done = wait_for(lambda: finished(http, job), 300, "the job")
        assert done["state"] == "failed", done
        assert done["error"]["code"] == "storage_quota_exceeded" and done["error"]["user_error"]
        assert "older checkpoints are kept" in done["error"]["message"]
        checkpoints = http.get(f"/jobs/{job}/checkpoints").json()["data"]
        assert [c["step"] for c in checkpoints] == [1]
        output = service.home / "artifacts" / "jobs" / job / "output"
        on_disk = sorted(p.name for p in output.glob("checkpoint-*"))
        assert on_disk == ["checkpoint-1"]
        figures = http.get("/tenant").json()["quotas"]["max_storage_bytes"]
        assert figures["used"] <= figures["allowed"] == allowed
