"""The app under a real uvicorn process (``--factory``), configured only through GLMFT_ env."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.api.conftest import REDIS_URL
from tests.api.helpers import REPO, job_body, queued_job_ids, valid_jsonl


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(
    tmp_path: Path, store_url: str, tiny_model_dir: Path, broker: redis.Redis
) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "GLMFT_HOME": str(tmp_path / "home"),
        "GLMFT_DATABASE_URL": store_url,
        "GLMFT_BROKER_URL": REDIS_URL,
        "GLMFT_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "GLMFT_MODELS": json.dumps({"glm-4-tiny": {"path": str(tiny_model_dir)}}),
        "GLMFT_ALLOW_ANONYMOUS": "true",
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=REPO, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("uvicorn did not come up")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_upload_and_job_over_real_http(server: str, broker: redis.Redis) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        assert http.get("/readyz").json()["status"] == "ready"
        files = {"file": ("train.jsonl", valid_jsonl(8), "application/jsonl")}
        dataset = http.post("/datasets", files=files)
        assert dataset.status_code == 201, dataset.text
        assert dataset.json()["conversations"] == 8
        headers = {"Idempotency-Key": "uvicorn-1"}
        job = http.post("/jobs", json=job_body(dataset.json()["id"]), headers=headers)
        assert job.status_code == 201, job.text
        assert (
            http.post("/jobs", json=job_body(dataset.json()["id"]), headers=headers).status_code
            == 200
        )
        assert queued_job_ids(broker) == [job.json()["id"]]
        assert job.headers["x-request-id"]


def test_an_open_event_stream_does_not_block_other_requests(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        files = {"file": ("train.jsonl", valid_jsonl(2), "application/jsonl")}
        ds = http.post("/datasets", files=files).json()["id"]
        job_id = http.post("/jobs", json=job_body(ds)).json()["id"]  # stays queued: no worker
        sse = {"Accept": "text/event-stream"}
        with http.stream("GET", f"/jobs/{job_id}/events", headers=sse) as stream:
            assert next(stream.iter_text()).startswith("retry:")
            started = time.monotonic()
            for _ in range(5):
                assert httpx.get(f"{server}/healthz", timeout=2).status_code == 200
            assert time.monotonic() - started < 2
