"""Fixtures of the fault tests: a PostgreSQL cluster of their own for the session (a test may
stop and start it), a Redis server of each test's own, and a database in the cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import upgrade
from tests.reliability.services import PostgresCluster, RedisServer, postgres_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def database_url(pg_cluster: PostgresCluster) -> str:
    """A new, migrated database in the session's cluster."""
    url = pg_cluster.create_database(f"glmft_{uuid.uuid4().hex[:10]}")
    upgrade(url)
    return url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
