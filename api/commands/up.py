"""``glmft up``: the whole service on one machine, on embedded defaults.

Starts the API (uvicorn) and one worker (Celery, solo pool, with the reaper's beat) against SQLite
and an SQLite-backed broker under ``--home`` (``GLMFT_HOME``, default ``~/.glmft``), registers the
tiny GLM-4 bases ``glm-4-tiny`` and ``glm-4v-tiny`` (a vision model; both built offline on first
start, trained on CPU) beside any configured bases, and stops both on Ctrl-C or SIGTERM. The same
code runs against PostgreSQL and Redis: only the URLs differ.

Once the API answers it prints where it is, its docs, its dashboard and the command to run next;
the two processes write to ``<home>/logs/api.log`` and ``worker.log`` (``--verbose``: to the
terminal).

On a loopback address it runs in the local mode (``GLMFT_ALLOW_ANONYMOUS=true``, announced at
start): a request without a known key is tenant ``default`` with every scope. On any other
address every request needs an API key, and it refuses to start while none exists.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import IO

NAME = "up"
HELP = "run the API and a worker on this machine (SQLite, embedded broker, tiny base model)"
TINY_BASE = "glm-4-tiny"
TINY_VISION_BASE = "glm-4v-tiny"
# the shell form of GLMFT_MODELS__glm-4-tiny__... (core.settings reads "_" in a name as "-")
TINY_ENV = "GLMFT_MODELS__glm_4_tiny"
TINY_VISION_ENV = "GLMFT_MODELS__glm_4v_tiny"
DEMO_TRAIN = Path(__file__).resolve().parents[2] / "trainer" / "assets" / "demo" / "train.jsonl"
READY_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--home", type=Path, help="state directory (default: GLMFT_HOME or ~/.glmft)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the API's and the worker's own output here instead of in <home>/logs/",
    )


def service_env(home: Path | None) -> dict[str, str]:
    """The environment both processes run with: GLMFT_HOME and the tiny base registered (its
    jobs train on CPU unless they ask for GPUs)."""
    from core.settings import Settings

    env = dict(os.environ)
    if home is not None:
        env["GLMFT_HOME"] = str(home.resolve())
    home_dir = Path(env["GLMFT_HOME"]) if "GLMFT_HOME" in env else Settings().home
    env["GLMFT_HOME"] = str(home_dir)
    for name, variable in ((TINY_BASE, TINY_ENV), (TINY_VISION_BASE, TINY_VISION_ENV)):
        tiny = env.get(f"GLMFT_MODELS__{name}__PATH", str(home_dir / "models" / name))
        env.setdefault(f"{variable}__PATH", tiny)
        env.setdefault(f"{variable}__GPUS", "0")
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


def api_workers(database_url: str) -> int:
    """uvicorn worker processes: one per core on PostgreSQL. On SQLite one: SQLite lets one
    process write at a time, so a second one adds lock waits rather than throughput, and each
    process would load its own chat engines (the dashboard's chat runs in the API)."""
    if database_url.startswith("sqlite"):
        return 1
    return max(1, len(os.sched_getaffinity(0)))


def api_command(host: str, port: int, *, workers: int = 1) -> list[str]:
    """uvicorn serving the API: ``workers`` processes, uvloop's event loop and httptools'
    HTTP parser (both cost less CPU per request than asyncio's loop and h11)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "api.main:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
    ]


def api_env(env: dict[str, str], home: Path, workers: int) -> dict[str, str]:
    """The API's environment: with several worker processes, a fresh directory where each
    writes its request metrics, so that ``/metrics`` on any of them sums them all
    (``api.telemetry``)."""
    from api.telemetry import MULTIPROCESS_DIR_ENV

    if workers < 2:
        return env
    shared = home / "metrics"
    shutil.rmtree(shared, ignore_errors=True)  # the counts of an earlier run
    shared.mkdir(parents=True)
    return {**env, MULTIPROCESS_DIR_ENV: str(shared)}


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


def next_steps(base_url: str, home: Path, *, verbose: bool = False) -> str:
    """What ``glmft up`` prints once the API answers: where things are and what to run next."""
    logs = "this terminal" if verbose else f"{home / 'logs' / 'api.log'}, worker.log beside it"
    return "\n".join(
        [
            f"glmft is up: {base_url}  (home {home})",
            f"  API docs   {base_url}/docs",
            f"  dashboard  {base_url}/ui/",
            f"  bases      {TINY_BASE}, {TINY_VISION_BASE} (tiny, train on CPU)",
            f"  logs       {logs}",
            "",
            "Next, in another shell: train a LoRA adapter on the bundled demo data (a minute):",
            f"  glmft-client --base-url {base_url} finetune --model {TINY_BASE} --config tiny/lora "
            f"--train {DEMO_TRAIN} --wait",
            f"  (or: curl -F file=@{DEMO_TRAIN} {base_url}/datasets, then POST {base_url}/jobs)",
            "",
            "Ctrl-C stops it.",
        ]
    )


def _log(home: Path, name: str, verbose: bool, stack: ExitStack) -> IO[bytes] | None:
    if verbose:
        return None
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return stack.enter_context((home / "logs" / f"{name}.log").open("ab"))


def _api_ready(base_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run(args: argparse.Namespace) -> int:
    # this process only prepares and supervises: its INFO lines (a line per migration, every
    # readiness probe) would bury what a person needs to read
    logging.getLogger().setLevel(logging.WARNING)
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
    ensure_tiny_base(Path(env[f"{TINY_ENV}__PATH"]))
    ensure_tiny_base(Path(env[f"{TINY_VISION_ENV}__PATH"]), vision=True)
    base_url = dashboard_url(args.host, args.port).removesuffix("/ui/")  # wildcard: loopback
    announce_auth(env, base_url)
    with ExitStack() as stack:
        outputs = {n: _log(settings.home, n, args.verbose, stack) for n in ("api", "worker")}
        worker = subprocess.Popen(  # noqa: S603 - our own command
            worker_command(pool="solo", beat_schedule=settings.home / "beat-schedule"),
            env=env,
            stdout=outputs["worker"],
            stderr=subprocess.STDOUT if outputs["worker"] else None,
        )
        workers = api_workers(database_url)
        api = subprocess.Popen(  # noqa: S603 - our own command
            api_command(args.host, args.port, workers=workers),
            env=api_env(env, settings.home, workers),
            stdout=outputs["api"],
            stderr=subprocess.STDOUT if outputs["api"] else None,
        )
        code = _serve(settings.home, base_url, {"api": api, "worker": worker}, args.verbose)
    return code


def _serve(
    home: Path, base_url: str, processes: dict[str, subprocess.Popen[bytes]], verbose: bool
) -> int:
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline, announced = time.monotonic() + READY_TIMEOUT_S, False
    while not stopping and all(p.poll() is None for p in processes.values()):
        if not announced and _api_ready(base_url):
            print(next_steps(base_url, home, verbose=verbose), flush=True)
            announced = True
        elif not announced and time.monotonic() > deadline:
            sys.stderr.write(f"glmft up: the API did not answer at {base_url} in time\n")
            break
        time.sleep(0.5)
    for name, process in processes.items():
        if not stopping and process.poll() is not None:
            log = home / "logs" / f"{name}.log"
            end = "" if verbose else f"; the end of {log}:\n{_tail(log)}"
            sys.stderr.write(f"glmft up: the {name} stopped (exit {process.returncode}){end}\n")
    code = _shutdown(list(processes.values()))
    return code if stopping else 1


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
