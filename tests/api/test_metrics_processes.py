"""Request metrics of several API worker processes: with ``PROMETHEUS_MULTIPROC_DIR`` each
process writes its counts there, and a scrape answered by any of them sums them all."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from api.commands.up import api_env
from api.telemetry import MULTIPROCESS_DIR_ENV, Telemetry
from tests.api.helpers import REPO

#: one worker process: its own Telemetry, ``n`` finished GET /jobs requests
WORKER = """
import sys
from api.telemetry import Telemetry
telemetry = Telemetry(lambda: None)
for _ in range(int(sys.argv[1])):
    telemetry.observe("GET", "/jobs", 200, 0.01)
"""


def _count(exposition: str) -> float:
    found = re.search(
        r'^glmft_http_requests_total\{method="GET",route="/jobs",status="200"\} (\S+)$',
        exposition,
        re.MULTILINE,
    )
    assert found, exposition
    return float(found.group(1))


def test_a_scrape_sums_the_requests_of_every_worker_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    env = api_env({"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, tmp_path, workers=2)
    assert env[MULTIPROCESS_DIR_ENV] == str(shared) and shared.is_dir()
    for requests in (3, 4):  # two worker processes, one after the other
        subprocess.run([sys.executable, "-c", WORKER, str(requests)], env=env, check=True)
    monkeypatch.setenv(MULTIPROCESS_DIR_ENV, str(shared))
    scraped = Telemetry(lambda: None).render().decode()
    assert _count(scraped) == 7
    assert "glmft_http_request_duration_seconds_count" in scraped
    assert "glmft_jobs" not in scraped  # no database here: the jobs gauge is left out


def test_one_worker_keeps_its_metrics_in_process(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    assert api_env(env, tmp_path, workers=1) == env
    telemetry = Telemetry(lambda: None)
    telemetry.observe("GET", "/jobs", 200, 0.01)
    assert _count(telemetry.render().decode()) == 1


def test_glmft_up_starts_the_metrics_directory_empty(tmp_path: Path) -> None:
    stale = tmp_path / "metrics" / "counter_123.db"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run")
    api_env({}, tmp_path, workers=2)
    assert list((tmp_path / "metrics").iterdir()) == []
