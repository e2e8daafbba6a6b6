"""What keeps a request cheap: no dependency overrides (with one set, FastAPI analyses every
dependency's signature again on every request), the dependencies that do no I/O run on the
event loop (no thread hop), the startup objects are frozen out of the collector's full passes,
and `glmft up` serves with one worker per core on PostgreSQL, uvloop and httptools."""

from __future__ import annotations

import gc
import inspect
import os

from fastapi.testclient import TestClient

from api import deps
from api.commands.up import api_command, api_workers
from api.main import create_app
from core.settings import Settings


def test_no_dependency_overrides_and_cheap_dependencies_are_async(client: TestClient) -> None:
    assert client.app.dependency_overrides == {}  # type: ignore[attr-defined]
    for dependency in (
        deps.get_settings,
        deps.get_engine,
        deps.get_session,
        deps.get_principal,
        deps.get_tenant,
        deps.require_admin,
        deps.get_enqueuer,
    ):
        assert inspect.iscoroutinefunction(dependency) or inspect.isasyncgenfunction(dependency)


def test_startup_objects_are_frozen_while_the_app_runs(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0  # stopped: its objects can be collected again


def test_glmft_up_serves_one_worker_per_core_on_postgresql() -> None:
    assert api_workers("sqlite:////tmp/glmft.db") == 1
    assert api_workers("postgresql+psycopg://u@h/db") == len(os.sched_getaffinity(0))
    command = api_command("127.0.0.1", 8000, workers=2)
    assert command[command.index("--workers") + 1] == "2"
    assert command[command.index("--loop") + 1] == "uvloop"
    assert command[command.index("--http") + 1] == "httptools"
