"""API fixtures: the app over a real store (SQLite file and PostgreSQL), real Redis as broker,
an artifact root in tmp and a tiny GLM-4 model registered as ``glm-4-tiny``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.main import create_app
from core.settings import BaseModelEntry, Settings
from tests.helpers import redis_url

REDIS_URL = redis_url(9)
TABLES = (
    "evaluation_events",
    "evaluation_outputs",
    "evaluation_samples",
    "evaluations",
    "adapters",
    "checkpoints",
    "metrics",
    "job_events",
    "jobs",
    "datasets",
    "base_models",
    "workers",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The store URL; PostgreSQL tables are emptied after each test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'glmft.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The real Redis database the API publishes to, empty before and after the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path, store_url: str, tiny_model_dir: Path, broker: redis.Redis) -> Settings:
    return Settings(
        home=tmp_path / "home",
        database_url=store_url,
        broker_url=REDIS_URL,
        artifact_root=tmp_path / "artifacts",
        models={"glm-4-tiny": BaseModelEntry(path=tiny_model_dir, description="tiny test model")},
        heartbeat_timeout_s=60.0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)
    app.state.sse_poll_s = 0.05
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def engine(client: TestClient) -> Engine:
    """The app's engine, to arrange rows directly (events, metrics, workers, states)."""
    result: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return result
