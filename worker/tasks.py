"""Celery tasks: thin wrappers around the runner and the reaper."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from celery import signals
from celery.utils.log import get_task_logger
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from core.db import prepare
from core.models import WorkerNode, utcnow
from core.settings import get_settings
from worker.broker import covered_jobs
from worker.celery_app import REAP_STALE_JOBS, RUN_TRAINING_JOB, TRAINING_QUEUE, app
from worker.gpus import GpuLeases
from worker.reaper import StoreWatch, republish_lost_jobs
from worker.reaper import reap_stale_jobs as reap
from worker.runner import NodeBusyError, Runner
from worker.webhooks import Dispatcher

logger = get_task_logger(f"{__name__}.celery")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeRuntime:
    engine: Engine
    runner: Runner
    store_watch: StoreWatch


@cache
def runtime() -> NodeRuntime:
    """This process's engine and runner (created after fork, never shared with the parent)."""
    settings = get_settings()
    engine = prepare(settings)
    node = settings.worker_name or socket.gethostname()
    leases = GpuLeases(settings.home / "gpu-leases", settings.worker_gpus)
    watch = StoreWatch(gap_s=settings.heartbeat_timeout_s)
    return NodeRuntime(engine, Runner(settings, engine, leases, node, wake=_enqueue), watch)


def _enqueue(job_id: str) -> None:
    app.send_task(RUN_TRAINING_JOB, args=[job_id], queue=TRAINING_QUEUE)


@app.task(name=RUN_TRAINING_JOB, bind=True, acks_late=True)
def run_training_job(self: Any, job_id: str) -> str:
    try:
        return runtime().runner.run(job_id)
    except NodeBusyError as exc:
        logger.info("job %s: %s; retrying in %g s", job_id, exc, exc.retry_s)
        raise self.retry(exc=exc, countdown=exc.retry_s, max_retries=None) from exc


@app.task(name=REAP_STALE_JOBS)
def reap_stale_jobs() -> list[str]:
    """The beat's sweep: stale running jobs, then queued jobs that no message covers."""
    settings = get_settings()
    state = runtime()
    touched: list[str] = []
    try:
        with Session(state.engine, expire_on_commit=False) as session:
            session.connection()  # raises while the store is down
            state.store_watch.saw_store(time.monotonic())
            if state.store_watch.watched_for(time.monotonic()) >= settings.heartbeat_timeout_s:
                touched += reap(session, timeout_s=settings.heartbeat_timeout_s, enqueue=_enqueue)
            touched += republish_lost_jobs(
                session,
                grace_s=settings.publish_grace_s,
                covered=lambda: covered_jobs(settings.resolved_broker_url, TRAINING_QUEUE),
                enqueue=_enqueue,
            )
    except (SQLAlchemyError, redis.RedisError, OSError) as exc:
        state.store_watch.lost_store()  # heartbeats missed meanwhile do not count
        logger.warning("sweep skipped: %s: %s", type(exc).__name__, exc)
    return touched


def announce_node(engine: Engine, name: str, gpus: list[int]) -> None:
    """Upsert this node's GPU inventory and ``last_seen`` (the API's capacity check)."""
    with Session(engine) as session:
        node = session.get(WorkerNode, name) or WorkerNode(name=name)
        node.gpus, node.queues, node.last_seen = list(gpus), [TRAINING_QUEUE], utcnow()
        session.add(node)
        session.commit()


@signals.worker_ready.connect
def _start_node_heartbeat(**_: Any) -> None:
    settings = get_settings()
    state = runtime()

    def beat() -> None:
        while True:
            try:
                announce_node(state.engine, state.runner.node, settings.worker_gpus)
            except Exception:
                _log.exception("node heartbeat failed")
            stop.wait(settings.heartbeat_interval_s)

    stop = threading.Event()
    threading.Thread(target=beat, name="glmft-node-heartbeat", daemon=True).start()
    _dispatchers.append(Dispatcher(state.engine, settings))
    _dispatchers[-1].start()


_dispatchers: list[Dispatcher] = []  # the main process's webhook dispatcher


@signals.worker_shutdown.connect
def _stop_dispatcher(**_: Any) -> None:
    while _dispatchers:  # lets the delivery in flight finish and be recorded
        _dispatchers.pop().stop()


@signals.worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    runtime.cache_clear()  # a forked pool child must not reuse the parent's connections
