"""The README's service examples run as written against a CPU-only service: the curl lines, the
SDK example, the ``glmft-client`` example and the ``openai`` example. Only the address (and the
API key the test service requires) and the ``ds-...``/``job-...`` placeholders are filled in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from glmft_client import Client

from tests.live_service import MODEL, LiveService

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def block(language: str, containing: str) -> str:
    """The README's one fenced ``language`` block holding ``containing``."""
    found = [
        text
        for text in re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)
        if containing in text
    ]
    assert len(found) == 1, f"{len(found)} {language} blocks with {containing!r}"
    return found[0]


@pytest.fixture
def env(live_service: LiveService, tmp_path: Path) -> dict[str, str]:
    """A shell's environment pointing at the service; curl sends the API key (``.curlrc``)."""
    (tmp_path / ".curlrc").write_text(
        f'header = "Authorization: Bearer {live_service.api_key}"\n', encoding="utf-8"
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GLMFT_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "GLMFT_BASE_URL": live_service.base_url,
        "GLMFT_API_KEY": live_service.api_key,
        "CURL_HOME": str(tmp_path),
    }


def shell(command: str, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(
        ["bash", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_curl_lines(live_service: LiveService, env: dict[str, str]) -> None:
    lines = block("bash", "glmft up").replace("\\\n", " ").splitlines()
    upload, create, follow = (re.sub(r"\s+# .*$", "", line) for line in lines[1:4])
    address = live_service.base_url.removeprefix("http://")
    dataset = json.loads(shell(upload.replace("localhost:8000", address), env))
    assert dataset["valid"] and dataset["filename"] == "train.jsonl"
    create = create.replace("localhost:8000", address).replace("ds-...", dataset["id"])
    job = json.loads(shell(create, env))
    assert job["state"] == "queued" and job["gpus"] == 0, job  # no GPU here: CPU by default
    stream = shell(follow.replace("localhost:8000", address).replace("job-...", job["id"]), env)
    assert "event: started" in stream and "event: succeeded" in stream
    assert stream.rstrip().splitlines()[-2] == "event: end"


def test_the_sdk_example(env: dict[str, str]) -> None:
    code = block("python", "from glmft_client import Client")
    out = shell(f"python - <<'EOF'\n{code}EOF", env)
    adapter = out.strip().splitlines()[-1]
    assert re.fullmatch(rf"ft:{MODEL}:lora:job-\w+", adapter), out[-2000:]
    assert "queued " in out and "succeeded " in out  # the state events the loop printed


def test_the_cli_example(env: dict[str, str]) -> None:
    command = block("bash", "glmft-client finetune")
    out = shell(command, env)
    assert re.fullmatch(rf"ft:{MODEL}:lora:job-\w+\n", out), out


def test_the_openai_example(live_service: LiveService, env: dict[str, str]) -> None:
    code = block("python", "from openai import OpenAI")
    code = code.replace("http://127.0.0.1:8000", live_service.base_url)
    code = code.replace('api_key="unused"', f'api_key="{live_service.api_key}"')
    out = shell(f"python - <<'EOF'\n{code}print(job.id, job.status)\nEOF", env)
    job_id, status = out.split()
    assert status in ("queued", "running")
    with Client(base_url=live_service.base_url, api_key=live_service.api_key) as client:
        job = client.jobs.retrieve(job_id)
        assert (job.model, job.gpus, job.max_steps) == (MODEL, 0, 150)
        client.jobs.cancel(job_id)  # 150 steps: not worth the suite's time
