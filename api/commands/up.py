"""``glmft up``: the whole service on one machine, on embedded defaults.

Starts the API (uvicorn) and one worker (Celery, solo pool, with the reaper's beat) against SQLite
and an SQLite-backed broker under ``--home`` (``GLMFT_HOME``, default ``~/.glmft``), registers the
tiny GLM-4 bases ``glm-4-tiny`` and ``glm-4v-tiny`` (a vision model; both built offline on first
start) beside any configured bases, and stops
both on Ctrl-C or SIGTERM. The same code runs against PostgreSQL and Redis: only the URLs differ.

On a loopback address it runs in the local mode (``GLMFT_ALLOW_ANONYMOUS=true``, announced at
start): a request without a key is tenant ``default`` with every scope. On any other address
every request needs an API key, and it refuses to start while none exists.
"""

from __future__ import annotations

import argparse
import ipaddress
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --host value) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_count(database_url: str) -> int:
    """Keys that work now: unrevoked ones in SQL plus those of ``GLMFT_API_KEYS``."""
    from sqlmodel import Session, col, func, select

    from core.db import make_engine
    from core.settings import Settings
    from core.team_models import ApiKey

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            stored = session.exec(
                select(func.count()).where(col(ApiKey.revoked_at).is_(None))
            ).one()
    finally:
        engine.dispose()
    return int(stored) + len(Settings().api_keys)


def choose_auth(host: str, env: dict[str, str], database_url: str) -> str | None:
    """Set the children's ``GLMFT_ALLOW_ANONYMOUS``: the no-key local mode on loopback (unless
    turned off), keys on any other address. Returns why it refuses to start, or None."""
    asked = env.get("GLMFT_ALLOW_ANONYMOUS", "").strip().lower()
    if is_loopback(host):
        env.setdefault("GLMFT_ALLOW_ANONYMOUS", "true")
        return None
    if asked in ("1", "true", "yes", "on"):
        return (
            f"--host {host} serves other machines: the no-key local mode "
            "(GLMFT_ALLOW_ANONYMOUS=true) is only for loopback addresses"
        )
    env["GLMFT_ALLOW_ANONYMOUS"] = "false"
    if key_count(database_url) == 0:
        return (
            f"--host {host} serves other machines, so every request needs an API key, and "
            "none exists. Make one first: glmft keys create --tenant ops --scopes admin "
            "(with the same --home / GLMFT_HOME), or set GLMFT_API_KEYS; or bind --host "
            "127.0.0.1 for the local no-key mode"
        )
    return None


def announce_auth(env: dict[str, str], base: str) -> None:
    if env["GLMFT_ALLOW_ANONYMOUS"].lower() in ("1", "true", "yes", "on"):
        line = "=" * 78
        print(
            f"{line}\n LOCAL MODE on {base}: requests without an API key act as tenant "
            "'default'\n with every scope (admin included). Anything that can reach this "
            "port can\n use it. Bind another --host and API keys become mandatory.\n"
            f"{line}",
            flush=True,
        )
    else:
        print(f"API keys required on {base} (glmft keys create ...)", flush=True)


def run(args: argparse.Namespace) -> int:
    from core.db import upgrade
    from core.settings import Settings

    env = service_env(args.home)
    settings = Settings(home=Path(env["GLMFT_HOME"]))
    settings.home.mkdir(parents=True, exist_ok=True)
    database_url = env.get("GLMFT_DATABASE_URL") or settings.resolved_database_url
    upgrade(database_url)
    refusal = choose_auth(args.host, env, database_url)
    if refusal is not None:
        print(f"glmft up: {refusal}", file=sys.stderr)
        return 2
    ensure_tiny_base(Path(env[f"GLMFT_MODELS__{TINY_BASE}__PATH"]))
    ensure_tiny_base(Path(env[f"GLMFT_MODELS__{TINY_VISION_BASE}__PATH"]), vision=True)
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
    announce_auth(env, f"http://{args.host}:{args.port}")
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
