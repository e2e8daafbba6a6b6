"""``glmft up``: the whole service on one machine, on embedded defaults.

Starts the API (uvicorn) and one worker (Celery, solo pool, with the reaper's beat) against SQLite
and an SQLite-backed broker under ``--home`` (``GLMFT_HOME``, default ``~/.glmft``), registers the
tiny GLM-4 bases ``glm-4-tiny`` and ``glm-4v-tiny`` (a vision model; both built offline on first
start) beside any configured bases, and stops
both on Ctrl-C or SIGTERM. The same code runs against PostgreSQL and Redis: only the URLs differ.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

NAME = "up"
HELP = "run the API and a worker on this machine (SQLite, embedded broker, tiny base model)"
TINY_BASE = "glm-4-tiny"
TINY_VISION_BASE = "glm-4v-tiny"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--home", type=Path, help="state directory (default: GLMFT_HOME or ~/.glmft)"
    )


def service_env(home: Path | None) -> dict[str, str]:
    """The environment both processes run with: GLMFT_HOME and the tiny base registered."""
    from core.settings import Settings

    env = dict(os.environ)
    if home is not None:
        env["GLMFT_HOME"] = str(home.resolve())
    home_dir = Path(env["GLMFT_HOME"]) if "GLMFT_HOME" in env else Settings().home
    env["GLMFT_HOME"] = str(home_dir)
    for name in (TINY_BASE, TINY_VISION_BASE):
        env.setdefault(f"GLMFT_MODELS__{name}__PATH", str(home_dir / "models" / name))
    return env


def worker_command(
    *, pool: str = "solo", concurrency: int = 1, beat_schedule: Path | None = None
) -> list[str]:
    """``celery -A worker worker`` for the training queue; with ``beat_schedule`` it also runs
    the reaper's scheduler (one per deployment)."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "-Q",
        "training",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--loglevel=INFO",
    ]
    if beat_schedule is not None:
        command += ["-B", "--schedule", str(beat_schedule)]
    return command


def dashboard_url(host: str, port: int) -> str:
    """Where the web dashboard of a service on ``host:port`` is (a wildcard host: loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - compared only
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui/"


def ensure_tiny_base(path: Path, *, vision: bool = False) -> None:
    if not (path / "config.json").is_file():
        from trainer.tiny import build_tiny_model
        from trainer.tiny_vision import build_tiny_vision_model

        name = TINY_VISION_BASE if vision else TINY_BASE
        print(f"building the tiny base model {name} in {path} (offline, once)", flush=True)
        if vision:
            build_tiny_vision_model(path, hidden_size=128)
        else:
            build_tiny_model(path, hidden_size=128)


def run(args: argparse.Namespace) -> int:
    from core.db import upgrade
    from core.settings import Settings

    env = service_env(args.home)
    settings = Settings(home=Path(env["GLMFT_HOME"]))
    settings.home.mkdir(parents=True, exist_ok=True)
    ensure_tiny_base(Path(env[f"GLMFT_MODELS__{TINY_BASE}__PATH"]))
    ensure_tiny_base(Path(env[f"GLMFT_MODELS__{TINY_VISION_BASE}__PATH"]), vision=True)
    upgrade(env.get("GLMFT_DATABASE_URL") or settings.resolved_database_url)
    worker = subprocess.Popen(  # noqa: S603 - our own command
        worker_command(pool="solo", beat_schedule=settings.home / "beat-schedule"),
        env=env,
    )
    api = subprocess.Popen(  # noqa: S603 - our own command
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--host",
            args.host,
            "--port",
            str(args.port),
        ],
        env=env,
    )
    print(
        f"glmft is up on http://{args.host}:{args.port} (home {settings.home}); Ctrl-C stops it\n"
        f"dashboard: {dashboard_url(args.host, args.port)}",
        flush=True,
    )
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and worker.poll() is None and api.poll() is None:
        time.sleep(0.5)
    return _shutdown([api, worker])


def _shutdown(processes: list[subprocess.Popen[bytes]]) -> int:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return 0 if all(p.returncode in (0, -signal.SIGTERM) for p in processes) else 1
