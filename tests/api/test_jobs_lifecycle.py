"""Reading, listing, cancelling and resuming jobs; events, metrics, checkpoints, logs."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from core.models import Adapter, Checkpoint, JobEvent, Metric, utcnow
from core.settings import Settings
from tests.api.helpers import assert_error, create_job, dataset_id, queued_job_ids, set_job


def _job(client: TestClient, **extra: Any) -> dict[str, Any]:
    response = create_job(client, dataset_id(client), **extra)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _add(engine: Engine, *rows: Any) -> None:
    with Session(engine) as session:
        session.add_all(rows)
        session.commit()


def test_get_shows_queue_position_progress_metrics_and_error(
    client: TestClient, engine: Engine, settings: Settings
) -> None:
    first, second = _job(client), _job(client)
    assert client.get(f"/jobs/{second['id']}").json()["queue_position"] == 1
    set_job(engine, first["id"], state="running", step=75)
    _add(
        engine,
        Metric(job_id=first["id"], step=10, split="train", name="loss", value=2.0),
        Metric(job_id=first["id"], step=20, split="train", name="loss", value=1.5),
        Metric(job_id=first["id"], step=20, split="validation", name="loss", value=1.8),
    )
    running = client.get(f"/jobs/{first['id']}").json()
    assert running["queue_position"] is None
    assert running["progress"] == 0.5  # tiny/lora: max_steps 150
    assert running["latest_metrics"] == {"train": {"loss": 1.5}, "validation": {"loss": 1.8}}
    # positions are counted in a snapshot of the queue at most this old (api.queue_positions)
    time.sleep(settings.queue_position_max_age_s)
    assert client.get(f"/jobs/{second['id']}").json()["queue_position"] == 0
    set_job(
        engine,
        first["id"],
        state="failed",
        error_code="training_diverged",
        error_message="loss is NaN at step 75",
        error_param="training_args.learning_rate",
        user_error=True,
    )
    failed = client.get(f"/jobs/{first['id']}").json()
    assert failed["error"] == {
        "code": "training_diverged",
        "message": "loss is NaN at step 75",
        "param": "training_args.learning_rate",
        "user_error": True,
    }


def test_list_filters_and_cursor_pagination(client: TestClient, engine: Engine) -> None:
    ids = [_job(client, metadata={"team": "a" if i % 2 else "b"})["id"] for i in range(5)]
    set_job(engine, ids[0], state="running")
    page = client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [ids[4], ids[3]] and page["has_more"]
    page2 = client.get("/jobs", params={"limit": 2, "after": page["next_cursor"]}).json()
    assert [j["id"] for j in page2["data"]] == [ids[2], ids[1]]
    page3 = client.get("/jobs", params={"limit": 2, "after": page2["next_cursor"]}).json()
    assert [j["id"] for j in page3["data"]] == [ids[0]] and not page3["has_more"]
    team_a = client.get("/jobs", params={"metadata.team": "a"}).json()["data"]
    assert {j["id"] for j in team_a} == {ids[1], ids[3]}
    running = client.get("/jobs", params={"state": "running"}).json()["data"]
    assert [j["id"] for j in running] == [ids[0]]
    both = client.get("/jobs", params=[("state", "running"), ("state", "queued")]).json()
    assert len(both["data"]) == 5
    assert client.get("/jobs", params={"model": "other"}).json()["data"] == []
    assert_error(client.get("/jobs", params={"after": "garbage"}), 422, "invalid_request", "after")
    assert_error(client.get("/jobs", params={"state": "bogus"}), 422, "invalid_request")


def test_cancel_queued_running_and_finished(client: TestClient, engine: Engine) -> None:
    queued, running = _job(client), _job(client)
    cancelled = client.post(f"/jobs/{queued['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"]
    set_job(engine, running["id"], state="running")
    cancelling = client.post(f"/jobs/{running['id']}/cancel").json()
    assert cancelling["state"] == "cancelling" and cancelling["cancel_requested"] is True
    again = client.post(f"/jobs/{running['id']}/cancel")
    assert again.status_code == 200 and again.json()["state"] == "cancelling"
    error = assert_error(client.post(f"/jobs/{queued['id']}/cancel"), 409, "invalid_job_transition")
    assert error["details"]["state"] == "cancelled"


def _kinds(client: TestClient, job_id: str) -> list[tuple[str, str | None]]:
    events = client.get(f"/jobs/{job_id}/events").json()["data"]
    return [(e["kind"], e["data"].get("previous")) for e in events]


def test_every_state_change_is_an_event_pause_included(
    client: TestClient, engine: Engine, broker: redis.Redis
) -> None:
    # given a job cancelled before it started, then resumed
    job = _job(client)["id"]
    assert client.post(f"/jobs/{job}/cancel").json()["state"] == "cancelled"
    assert client.post(f"/jobs/{job}/resume").json()["state"] == "queued"
    # when it is paused while queued, resumed, claimed and paused while running
    assert client.post(f"/jobs/{job}/pause").json()["state"] == "paused"
    assert client.post(f"/jobs/{job}/resume").json()["state"] == "queued"
    set_job(engine, job, state="running", worker="node-a", heartbeat_at=utcnow())
    paused = client.post(f"/jobs/{job}/pause").json()
    assert paused["state"] == "paused" and paused["worker"] == "node-a"
    # then a resume waits until the worker has stopped the trainer and given the job up
    stopping = assert_error(client.post(f"/jobs/{job}/resume"), 409, "job_still_stopping")
    assert "node-a" in stopping["message"]
    set_job(engine, job, worker=None)
    assert client.post(f"/jobs/{job}/resume").json()["state"] == "queued"
    # and every change is an event named after the state entered, with the one it left
    assert _kinds(client, job) == [
        ("queued", None),
        ("cancelled", "queued"),
        ("queued", "cancelled"),
        ("paused", "queued"),
        ("queued", "paused"),
        ("paused", "running"),  # the running state was arranged directly, as a worker's claim
        ("queued", "paused"),
    ]
    events = client.get(f"/jobs/{job}/events").json()["data"]
    assert events[2]["message"] == "cancelled -> queued: resumed from the start"
    assert queued_job_ids(broker) == [job] * 4  # created, then each resume
    # a finished job cannot be paused
    set_job(engine, job, state="succeeded")
    assert_error(client.post(f"/jobs/{job}/pause"), 409, "invalid_job_transition")


def test_resume_checks_the_checkpoint_and_enqueues(
    client: TestClient, engine: Engine, broker: redis.Redis
) -> None:
    job = _job(client)
    assert_error(client.post(f"/jobs/{job['id']}/resume"), 409, "invalid_job_transition")
    set_job(engine, job["id"], state="failed", error_code="oom", error_message="x", attempt=3)
    missing = client.post(f"/jobs/{job['id']}/resume", json={"checkpoint_step": 50})
    assert_error(missing, 422, "invalid_request", "checkpoint_step")
    _add(
        engine,
        *[
            Checkpoint(job_id=job["id"], tenant_id="default", step=s, path=f"/x/{s}", bytes=1)
            for s in (75, 150)
        ],
    )
    chosen = client.post(f"/jobs/{job['id']}/resume", json={"checkpoint_step": 75}).json()
    assert chosen["state"] == "queued" and chosen["resume_from_step"] == 75
    assert chosen["error"] is None and chosen["max_attempts"] == 6
    assert queued_job_ids(broker) == [job["id"], job["id"]]
    set_job(engine, job["id"], state="cancelled")
    newest = client.post(f"/jobs/{job['id']}/resume").json()
    assert newest["resume_from_step"] == 150


def test_events_paging_and_sse_stream_of_a_finished_job(client: TestClient, engine: Engine) -> None:
    job = _job(client)
    created = client.get(f"/jobs/{job['id']}/events").json()["data"]
    assert [e["kind"] for e in created] == ["queued"]  # the job's creation is its first event
    _add(engine, *[JobEvent(job_id=job["id"], kind="step", data={"step": i}) for i in range(5)])
    params = {"limit": 3, "after": created[0]["id"]}
    page = client.get(f"/jobs/{job['id']}/events", params=params).json()
    assert [e["data"]["step"] for e in page["data"]] == [0, 1, 2] and page["has_more"]
    rest = client.get(f"/jobs/{job['id']}/events", params={"after": page["next_cursor"]}).json()
    assert [e["data"]["step"] for e in rest["data"]] == [3, 4] and not rest["has_more"]
    set_job(engine, job["id"], state="succeeded")
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(created[0]["id"])}
    with client.stream("GET", f"/jobs/{job['id']}/events", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [
            f
            for f in response.read().decode().split("\n\n")
            if f.startswith("id:") or "event: end" in f
        ]
    kinds = [
        line.split(": ", 1)[1]
        for f in frames
        for line in f.splitlines()
        if line.startswith("event:")
    ]
    assert kinds == ["step"] * 5 + ["end"]
    last = json.loads(frames[-1].splitlines()[-1].removeprefix("data: "))
    assert last == {"job_id": job["id"], "state": "succeeded"}
    resumed = client.get(
        f"/jobs/{job['id']}/events", headers={**headers, "Last-Event-ID": page["next_cursor"]}
    )
    assert resumed.text.count("event: step") == 2


def test_metrics_checkpoints_logs(client: TestClient, engine: Engine, settings: Settings) -> None:
    job = _job(client)
    _add(
        engine,
        Metric(job_id=job["id"], step=10, split="train", name="loss", value=2.0),
        Metric(job_id=job["id"], step=10, split="train", name="grad_norm", value=0.3),
        Checkpoint(job_id=job["id"], tenant_id="default", step=10, path="/x", bytes=42),
    )
    metrics = client.get(f"/jobs/{job['id']}/metrics", params={"name": "loss"}).json()
    assert [(m["step"], m["value"]) for m in metrics["data"]] == [(10, 2.0)]
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    assert checkpoints == [
        {"step": 10, "bytes": 42, "metrics": {}, "created_at": checkpoints[0]["created_at"]}
    ]
    assert client.get(f"/jobs/{job['id']}/logs").text == ""
    log = settings.artifacts / "jobs" / job["id"] / "trainer.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(50_000)))
    tail = client.get(f"/jobs/{job['id']}/logs", params={"tail": 3})
    assert tail.headers["content-type"].startswith("text/plain")
    assert tail.text == "line 49997\nline 49998\nline 49999\n"
    # tqdm redraws its bar with carriage returns, and colours with ANSI escapes: served as the
    # last frame, plain; the file keeps every byte
    bar = "\r".join(f"{p:3d}%|{'#' * (p // 10):<10}| {p}/100" for p in (10, 50, 100))
    with log.open("a") as handle:
        handle.write(f"\x1b[32mINFO\x1b[0m training\n\r{bar}\r\n")
    tail = client.get(f"/jobs/{job['id']}/logs", params={"tail": 2})
    assert tail.text == "INFO training\n100%|##########| 100/100\n"
    assert "\x1b[32m" in log.read_text() and " 50%|" in log.read_text()
    assert_error(client.get("/jobs/job-nope/logs"), 404, "job_not_found", "job_id")


def test_models_lists_bases_and_succeeded_adapters(client: TestClient, engine: Engine) -> None:
    done, running = _job(client), _job(client)
    set_job(engine, done["id"], state="succeeded")
    set_job(engine, running["id"], state="running")
    _add(
        engine,
        Adapter(
            id=f"ft:glm-4-tiny:a:{done['id']}",
            tenant_id="default",
            job_id=done["id"],
            base_model="glm-4-tiny",
            method="lora",
            path="/x",
        ),
        Adapter(
            id=f"ft:glm-4-tiny:b:{running['id']}",
            tenant_id="default",
            job_id=running["id"],
            base_model="glm-4-tiny",
            method="lora",
            path="/y",
        ),
        Adapter(
            id="ft:glm-4-tiny:c:other",
            tenant_id="someone-else",
            base_model="glm-4-tiny",
            method="lora",
            path="/z",
        ),
    )
    models = client.get("/models").json()["data"]
    assert [(m["id"], m["kind"]) for m in models] == [
        ("glm-4-tiny", "base"),
        (f"ft:glm-4-tiny:a:{done['id']}", "adapter"),
    ]


def test_cancel_retries_when_a_worker_claims_the_job_meanwhile(
    client: TestClient, engine: Engine
) -> None:
    from api.services.job_actions import cancel_job
    from core.models import Job

    # given a job read as queued, then claimed by a worker before the cancel's UPDATE
    job_id = _job(client)["id"]
    with Session(engine, expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == "queued"
        set_job(engine, job_id, state="running")
        # when it is cancelled, then the retry sees running and asks the worker to stop it
        assert cancel_job(session=session, job=job).state == "cancelling"
