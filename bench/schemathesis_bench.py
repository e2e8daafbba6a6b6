"""Schemathesis against the PostgreSQL-backed API: no 5xx and no response that breaks the
OpenAPI schema, over a long generated run.

    .venv/bin/python bench/schemathesis_bench.py [--max-time 1500] [--min-requests 20000]

Runs, on this machine: a throw-away PostgreSQL database (the local server), a Redis server of
its own (persistence off), the API under uvicorn, and a Celery worker that trains one tiny LoRA
job first, so that a valid dataset, a succeeded job, its checkpoints and its adapter exist; the
worker then stops (jobs the run creates stay queued). ``st run`` then fuzzes every operation
of ``/openapi.json`` (examples, coverage, fuzzing and stateful phases, until ``--max-time``) with
the checks ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance`` and ``response_schema_conformance``; half of the path ids are
the real ones (``bench/schemathesis_hooks.py``). The request count and the statuses come from
the API's own ``/metrics``; failures from schemathesis' JSON report. Writes
``bench/results/schemathesis.json``; exit 1 when a 5xx or a failed check was seen or fewer
than ``--min-requests`` requests were made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.service_fixture import (
    MODEL_NAME,
    REPO,
    api_command,
    free_port,
    job_body,
    start,
    stop,
    tail,
    throwaway_store,
    wait_for,
)

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
RESULT = REPO / "bench" / "results" / "schemathesis.json"
_REQUESTS = re.compile(
    r'^glmft_http_requests_total\{method="(\w+)",route="([^"]*)",status="(\d+)"\} ([\d.e+]+)$'
)


def start_redis(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(root)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def prepare(base_url: str, log: Path) -> dict[str, Any]:
    """A valid dataset, a succeeded tiny job with checkpoints, and its adapter."""
    rows = (REPO / "trainer" / "assets" / "demo" / "train.jsonl").read_bytes().splitlines(True)
    with httpx.Client(base_url=base_url, timeout=60) as client:
        upload = client.post("/datasets", files={"file": ("train.jsonl", b"".join(rows[:8]))})
        _ok(upload)
        dataset = upload.json()["id"]
        overrides = {
            "training_args.max_steps": 4,
            "training_args.save_steps": 2,
            "training_args.eval_strategy": "no",
        }
        job = client.post("/jobs", json={**job_body(dataset, overrides), "config": "tiny/lora"})
        _ok(job)
        job_id = job.json()["id"]

        def finished() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
            return body if body["state"] in ("succeeded", "failed", "cancelled") else None

        try:
            done = wait_for(finished, 300, "the setup job")
        except TimeoutError:
            print(tail(log), file=sys.stderr)
            raise
        if done["state"] != "succeeded":
            raise RuntimeError(f"the setup job {job_id} ended {done['state']}: {done['error']}")
        steps = [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()["data"]]
    return {
        "dataset": dataset,
        "job": job_id,
        "adapter": done["adapter_id"],
        "step": steps[-1],
        "base": MODEL_NAME,
    }


def _ok(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")


def request_counts(base_url: str) -> Counter[str]:
    """Requests the API answered by status, from its Prometheus counters."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = _REQUESTS.match(line)
        if match:
            counts[match.group(3)] += int(float(match.group(4)))
    return counts


def report_of(path: Path) -> dict[str, Any]:
    """Failures (checks that failed) and errors (the run itself) of schemathesis' JSON report."""
    if not path.is_file():
        return {"failures": [], "errors": [f"no report at {path}"], "test_cases": {}}
    data: dict[str, Any] = json.loads(path.read_text())
    return {k: data.get(k) for k in ("failures", "errors", "test_cases", "warnings", "phases")}


def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="glmft-schemathesis-"))
    from trainer.tiny import build_tiny_model

    model_dir = build_tiny_model(home / "model", seed=0)
    redis_process, broker = start_redis(home)
    api = worker = None
    try:
        with throwaway_store("postgresql", home) as database_url:
            env = {
                **os.environ,
                "GLMFT_HOME": str(home / "home"),
                "GLMFT_DATABASE_URL": database_url,
                "GLMFT_BROKER_URL": broker,
                f"GLMFT_MODELS__{MODEL_NAME}__PATH": str(model_dir),
                "GLMFT_WORKER_GPUS": "[]",
                "GLMFT_CHAT__MAX_NEW_TOKENS": "8",
                "GLMFT_ALLOW_ANONYMOUS": "true",  # no key: the default tenant (the local mode)
                "OMP_NUM_THREADS": "1",
            }
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            api_log, worker_log = home / "api.log", home / "worker.log"
            api = start(api_command(port), env, api_log)
            wait_for(lambda: _ready(base_url), 120, "the API")  # it migrated the store
            worker = start(_worker_command(), env, worker_log)
            ids = prepare(base_url, worker_log)
            stop(worker)
            worker = None
            report = home / "schemathesis.json"
            started = time.monotonic()
            command = [str(Path(sys.executable).with_name("st")), "run", f"{base_url}/openapi.json"]
            command += ["--checks", ",".join(CHECKS), "--workers", str(args.workers)]
            command += ["--max-time", str(args.max_time), "--seed", str(args.seed)]
            command += ["--request-timeout", "60", "--report", "json"]
            command += ["--report-json-path", str(report), "--suppress-health-check", "all"]
            st_env = {
                **env,
                "SCHEMATHESIS_HOOKS": "bench.schemathesis_hooks",
                "SCHEMATHESIS_BENCH_IDS": json.dumps(ids),
                "PYTHONPATH": str(REPO),
            }
            st = subprocess.run(command, cwd=REPO, env=st_env, capture_output=True, text=True)
            seconds = time.monotonic() - started
            counts = request_counts(base_url)
            st_report = report_of(report)
            failures, errors = st_report["failures"] or [], st_report["errors"] or []
            (home / "st.out").write_text(st.stdout + st.stderr)
    finally:
        stop(worker)
        stop(api)
        redis_process.terminate()
    total = sum(counts.values())
    server_errors = sum(n for status, n in counts.items() if status.startswith("5"))
    result = {
        "date": args.date,
        "device": args.device,
        "seconds": round(seconds, 1),
        "requests": total,
        "server_errors": server_errors,
        "failed_checks": len(failures),
        "run_errors": len(errors),
        "test_cases": st_report["test_cases"],
        "phases": st_report["phases"],
        "statuses": dict(sorted(counts.items())),
        "schemathesis_exit": st.returncode,
        "checks": list(CHECKS),
        "failures": failures[:50],
        "errors": errors[:20],
        "summary": st.stdout.strip().splitlines()[-15:],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'requests':<16}{total:>10}")
    print(f"{'5xx':<16}{server_errors:>10}")
    print(f"{'failed checks':<16}{len(failures):>10}")
    print(f"{'run errors':<16}{len(errors):>10}")
    print(f"{'seconds':<16}{seconds:>10.0f}")
    print("statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    print(f"schemathesis exit {st.returncode}; details in {RESULT} and {home / 'st.out'}")
    ok = server_errors == 0 and not failures and not errors and st.returncode == 0
    if total < args.min_requests:
        print(f"only {total} requests; at least {args.min_requests} were asked for")
        ok = False
    if ok:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1


def _worker_command() -> list[str]:
    from api.commands.up import worker_command

    return worker_command(pool="solo")


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-time", type=int, default=1500, help="seconds of fuzzing")
    parser.add_argument("--min-requests", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    parser.add_argument("--device", default="this machine (CPU)")
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
