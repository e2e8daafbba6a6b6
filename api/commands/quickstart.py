"""``glmft quickstart``: glmft's main job through the service, on embedded defaults.

Starts ``glmft up`` (API + worker, SQLite, embedded broker, tiny base model) in a scratch home,
uploads the bundled dataset, submits a LoRA job with an idempotency key, follows its events live,
lists its checkpoints and adapter, answers one prompt with the adapter, and stops the service.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from trainer.contract.events import CheckpointEvent, EvalEvent, StepEvent, parse_event
from trainer.contract.layout import JobDir

NAME = "quickstart"
HELP = "run the whole flow through the service: upload, job, live progress, adapter, chat"
DEMO_DATA = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=Path("runs/quickstart"),
        help="service state for this run (default: runs/quickstart)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")


def run(args: argparse.Namespace) -> int:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    args.home.mkdir(parents=True, exist_ok=True)
    log = (args.home / "service.log").open("ab")
    print(f"starting glmft up on {base} (log: {args.home / 'service.log'})", flush=True)
    service = subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, "-m", "trainer.cli", "up", "--port", str(port), "--home", str(args.home)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            _wait_ready(client, service)
            adapter = _train(client, args.timeout)
            if adapter is None:
                return 1
        # the prompt is answered in this process from the adapter's checkpoint, not through /chat
        job_dir = JobDir.for_job(args.home / "artifacts", str(adapter["job_id"]))
        checkpoint = job_dir.output / f"checkpoint-{adapter['step']}"
        _chat(str(adapter["id"]), checkpoint)
        return 0
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        log.close()


def _train(client: httpx.Client, timeout: float) -> dict[str, Any] | None:
    train = _upload(client, DEMO_DATA / "train.jsonl")
    dev = _upload(client, DEMO_DATA / "dev.jsonl")
    body = {
        "model": "glm-4-tiny",
        "method": "lora",
        "training_dataset": train,
        "validation_dataset": dev,
        "config": "tiny/lora",
        "suffix": "demo",
    }
    response = client.post("/jobs", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    _check(response)
    job = response.json()
    print(f"[3/5] job {job['id']} {job['state']}; following its events", flush=True)
    final = _follow(client, job["id"], timeout)
    if final["state"] != "succeeded":
        print(f"job {final['state']}: {json.dumps(final.get('error'))}", file=sys.stderr)
        return None
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()["data"]
    steps = ", ".join(str(c["step"]) for c in checkpoints)
    print(f"[4/5] succeeded: checkpoints at steps {steps}; adapter {final['adapter_id']}")
    models = client.get("/models").json()["data"]
    return next(m for m in models if m["id"] == final["adapter_id"])


def _upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as fh:
        response = client.post("/datasets", files={"file": (path.name, fh, "application/jsonl")})
    _check(response)
    dataset = response.json()
    print(
        f"[{1 if path.stem == 'train' else 2}/5] uploaded {path.name}: {dataset['id']}, "
        f"{dataset['conversations']} conversations, valid={dataset['valid']}",
        flush=True,
    )
    return str(dataset["id"])


def _follow(client: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    """Print step, eval and checkpoint events from the live SSE stream until the job ends."""
    deadline = time.monotonic() + timeout
    headers = {"Accept": "text/event-stream"}
    with client.stream(
        "GET", f"/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(60, read=timeout)
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                _show(json.loads(line[5:]))
            if time.monotonic() > deadline:
                break
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    return job


def _show(event: dict[str, Any]) -> None:
    """One job event from the API (its ``data`` is the trainer's event)."""
    data = parse_event(event.get("data") or {})
    if isinstance(data, StepEvent):
        print(f"      step {data.step}: loss {data.loss:.3f}", flush=True)
    elif isinstance(data, EvalEvent):
        scores = {
            k: round(v, 1)
            for k, v in data.metrics.items()
            if k.startswith(("rouge", "bleu")) and isinstance(v, int | float)
        }
        print(f"      eval at step {data.step}: {scores}", flush=True)
    elif isinstance(data, CheckpointEvent):
        print(f"      checkpoint at step {data.step} ({data.bytes:,} bytes)", flush=True)


def _chat(adapter_id: str, checkpoint: Path) -> None:
    from trainer.inference import SamplingParams, load_chat_model

    prompt = json.loads((DEMO_DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    question = prompt["messages"][0]["content"]
    model = load_chat_model(checkpoint)
    greedy = SamplingParams(max_new_tokens=48, do_sample=False, repetition_penalty=1.0)
    answer = model.reply([{"role": "user", "content": question}], greedy)
    print(f"[5/5] {adapter_id} answers {question!r}: {answer}")


def _wait_ready(client: httpx.Client, service: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"glmft up exited with {service.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready in 180 s")


def _check(response: httpx.Response) -> None:
    if response.is_error:
        raise SystemExit(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
