"""Admissions of one tenant on PostgreSQL: with a ``max_queued_jobs`` quota they take turns on
the tenant's row (the count and the insert must not interleave), without one they run side by
side (nothing is counted, so nothing needs the lock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from api.services.jobs import enter_queue
from core.db import make_engine, upgrade
from core.settings import QuotaSettings, Settings
from core.tenants import ensure_tenant


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with Session(engine) as session:
        ensure_tenant(session, "team-locks")
    yield engine
    engine.dispose()


def _second_admission_waits(engine: Engine, settings: Settings) -> bool:
    """Whether a second admission of the tenant blocks while a first one is uncommitted."""
    with Session(engine) as first, Session(engine) as second:
        enter_queue(first, settings, "team-locks", 0)  # holds whatever it takes until rollback
        second.execute(text("SET LOCAL lock_timeout = '300ms'"))
        try:
            enter_queue(second, settings, "team-locks", 0)
        except OperationalError:  # lock_timeout: it waited on the first one's lock
            return True
        finally:
            second.rollback()
            first.rollback()
    return False


def test_without_a_queue_quota_admissions_run_side_by_side(pg: Engine) -> None:
    settings = Settings(database_url=str(pg.url), quotas=QuotaSettings())
    assert not _second_admission_waits(pg, settings)


def test_with_a_queue_quota_admissions_take_turns(pg: Engine) -> None:
    settings = Settings(database_url=str(pg.url), quotas=QuotaSettings(max_queued_jobs=10))
    assert _second_admission_waits(pg, settings)
