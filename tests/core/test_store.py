"""The SQL store on SQLite and PostgreSQL: migrations, job state machine, claims, idempotency."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from core.db import upgrade
from core.errors import InvalidJobTransition, JobNotFound
from core.jobs import ALLOWED_TRANSITIONS, TERMINAL, JobState, claim, transition
from core.models import Checkpoint, Dataset, Job, JobEvent
from core.settings import Settings


def make_dataset(session: Session, tenant: str = "default") -> Dataset:
    dataset = Dataset(
        tenant_id=tenant,
        filename="train.jsonl",
        path="/x/train.jsonl",
        bytes=10,
        sha256="0" * 64,
        conversations=2,
        valid=True,
    )
    session.add(dataset)
    session.commit()
    return dataset


def make_job(session: Session, *, key: str | None = None, state: JobState = JobState.QUEUED) -> Job:
    dataset = make_dataset(session)
    job = Job(
        tenant_id="default",
        state=state.value,
        model="glm-4-tiny",
        method="lora",
        training_dataset_id=dataset.id,
        config={"max_steps": 4},
        idempotency_key=key,
    )
    session.add(job)
    session.commit()
    return job


def test_migrations_create_every_table_and_are_idempotent(engine: Engine) -> None:
    tables = set(inspect(engine).get_table_names())
    assert {
        "datasets",
        "jobs",
        "job_events",
        "metrics",
        "checkpoints",
        "adapters",
        "base_models",
        "alembic_version",
    } <= tables
    upgrade(engine.url.render_as_string(hide_password=False))  # again: nothing to do, no error


def test_job_moves_through_its_lifecycle(engine: Engine) -> None:
    with Session(engine) as session:
        job = make_job(session)
        running = claim(session, job.id, worker="w1", gpu_ids=[0])
        assert running is not None
        assert (running.state, running.attempt, running.worker) == ("running", 1, "w1")
        done = transition(session, job.id, JobState.SUCCEEDED, step=4)
        assert done.state == "succeeded" and done.step == 4 and done.finished_at is not None


def test_each_transition_records_its_event_and_a_refused_one_none(engine: Engine) -> None:
    with Session(engine) as session:
        job = make_job(session)
        claim(session, job.id, worker="w1", gpu_ids=[0])
        transition(session, job.id, JobState.PAUSED, reason="pause requested")
        with pytest.raises(InvalidJobTransition):
            transition(session, job.id, JobState.SUCCEEDED)
        transition(session, job.id, JobState.QUEUED, reason="resumed from checkpoint 2")
        events = session.exec(
            select(JobEvent).where(JobEvent.job_id == job.id).order_by(col(JobEvent.id))
        ).all()
    assert [(e.kind, e.data["previous"]) for e in events] == [
        ("running", "queued"),
        ("paused", "running"),
        ("queued", "paused"),
    ]
    assert events[0].data["worker"] == "w1" and events[0].data["attempt"] == 1
    assert events[2].message == "paused -> queued: resumed from checkpoint 2"


def test_illegal_transition_is_refused_and_changes_nothing(engine: Engine) -> None:
    with Session(engine) as session:
        job = make_job(session)
        with pytest.raises(InvalidJobTransition, match="is queued; it cannot become succeeded"):
            transition(session, job.id, JobState.SUCCEEDED)
        session.refresh(job)
        assert job.state == "queued"
        with pytest.raises(JobNotFound):
            transition(session, "job-missing", JobState.CANCELLED)


def test_only_one_of_two_concurrent_claims_wins(engine: Engine) -> None:
    with Session(engine) as session:
        job_id = make_job(session).id
    results: list[Job | None] = []

    def take(worker: str) -> None:
        with Session(engine) as session:
            results.append(claim(session, job_id, worker=worker, gpu_ids=[]))

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and len(results) == 4


def test_idempotency_key_is_unique_per_tenant(engine: Engine) -> None:
    with Session(engine) as session:
        make_job(session, key="ci-run-1")
        with pytest.raises(IntegrityError):
            make_job(session, key="ci-run-1")


def test_checkpoint_step_is_unique_per_job(engine: Engine) -> None:
    with Session(engine) as session:
        job = make_job(session)
        session.add(Checkpoint(job_id=job.id, tenant_id="default", step=4, path="/c4", bytes=1))
        session.commit()
        session.add(Checkpoint(job_id=job.id, tenant_id="default", step=4, path="/c4", bytes=1))
        with pytest.raises(IntegrityError):
            session.commit()


def test_terminal_states_only_lead_back_to_queued() -> None:
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()
    for state in TERMINAL - {JobState.SUCCEEDED}:
        assert ALLOWED_TRANSITIONS[state] == frozenset({JobState.QUEUED})


def test_settings_default_to_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLMFT_HOME", str(tmp_path))
    monkeypatch.setenv("GLMFT_WORKER_GPUS", "[0, 1]")
    monkeypatch.setenv("GLMFT_MODELS__glm-4-tiny__PATH", "/models/tiny")
    monkeypatch.setenv("GLMFT_LIMITS__MAX_ATTEMPTS", "5")
    settings = Settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'glmft.db'}"
    assert settings.resolved_broker_url.startswith("sqla+sqlite:///")
    assert settings.artifacts == tmp_path / "artifacts"
    assert settings.worker_gpus == [0, 1]
    assert settings.models["glm-4-tiny"].path == Path("/models/tiny")
    assert settings.limits.max_attempts == 5


def test_migrations_match_the_models(engine: Engine) -> None:
    # a model change without a migration shows up here
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
