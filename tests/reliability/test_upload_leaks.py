"""An API SIGKILLed in the middle of an upload leaves a ``.partial`` file in a directory no
dataset row names; the next API process sweeps it away (after the grace period)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from tests.helpers import wait_for
from tests.reliability.services import REPO, RedisServer, service_env, start_api, stop

BOUNDARY = "glmft-upload-boundary"


def _partial_uploads(artifacts: Path) -> list[Path]:
    """Partial files that hold at least a MiB already."""
    found = sorted((artifacts / "datasets").glob("*/*/.*.partial"))
    return [p for p in found if p.stat().st_size >= 1 << 20]


def test_a_killed_upload_leaves_nothing_behind(
    database_url: str, redis_server: RedisServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = service_env(
        home, database_url, redis_server.url(), tiny_model_dir, upload_orphan_grace_s=1
    )
    api = start_api(env, tmp_path / "api.log")
    port = int(api.base_url.rsplit(":", 1)[1])
    rows = (REPO / "trainer" / "assets" / "demo" / "train.jsonl").read_bytes().splitlines(True)
    data = b"".join(rows * 400)[: 3 << 20]
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        'filename="train.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    request = (
        f"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(head) + len(data) + len(tail)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + head + data[: 2 << 20])  # two thirds of the file, then nothing
        partial = wait_for(lambda: _partial_uploads(home / "artifacts"), 30, "the partial file")
        stop(api.process, signal.SIGKILL)  # mid-upload
    assert not (partial[0].parent / "train.jsonl").exists()  # never mistaken for a whole file
    time.sleep(1.5)  # past the grace period (1 s)
    again = start_api(env, tmp_path / "api2.log")  # sweeps at startup
    try:
        wait_for(lambda: not partial[0].parent.exists(), 30, "the orphan to be swept")
        with again.client() as client:
            assert client.get("/datasets").json()["data"] == []
    finally:
        stop(again.process)
