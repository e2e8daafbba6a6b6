"""Store fixtures: a migrated SQLite file and a migrated, throw-away PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.db import make_engine, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    engine = make_engine(url)
    yield engine
    if request.param == "postgresql":
        with engine.begin() as conn:
            for table in (
                "adapters",
                "checkpoints",
                "metrics",
                "job_events",
                "jobs",
                "datasets",
                "base_models",
            ):
                conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    engine.dispose()
