"""Enqueue training jobs on the Celery broker by task *name*: the API never imports worker code.

The broker carries only the job id (ARCHITECTURE.md decision 1); the worker loads everything else
from SQL. The task name below is the contract with ``worker/`` (docs/decisions/0002).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import uuid
from typing import Any, Protocol

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

#: The worker registers its task under exactly this name.
RUN_TRAINING_JOB = "worker.tasks.run_training_job"
#: The one queue training jobs go to for now (per-capacity queues can come later).
TRAINING_QUEUE = "training"


class Enqueuer(Protocol):
    """Hands a committed job to the workers."""

    def enqueue_job(self, job_id: str, queue: str) -> None:
        """Publish ``job_id`` on ``queue``; raises when the broker cannot take it."""


class CeleryEnqueuer:
    """An :class:`Enqueuer` publishing ``RUN_TRAINING_JOB`` through a small Celery client.

    Args:
        broker_url: Redis in production, ``sqla+sqlite`` in the embedded mode.
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        # publish retries are bounded: a request must not hang on a dead broker
        self._app = Celery("glmft-api", broker=broker_url, set_as_current=False)
        self._app.conf.task_publish_retry_policy = {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        }

    def enqueue_job(self, job_id: str, queue: str) -> None:
        """Send ``run_training_job(job_id)`` to ``queue``."""
        self._app.send_task(RUN_TRAINING_JOB, args=[job_id], queue=queue)
        logger.info("enqueued job %s on %s", job_id, queue)

    def close(self) -> None:
        """Release the broker connections."""
        self._app.close()


def task_message(
    job_id: str, queue: str, *, task_id: str, origin: str, reply_to: str
) -> dict[str, Any]:
    """The message Celery's ``send_task(RUN_TRAINING_JOB, args=[job_id], queue=queue)`` puts
    on a Redis broker: task protocol 2 (headers, ``[args, kwargs, embed]`` body) in kombu's
    Redis envelope (base64 body, delivery info and tag)."""
    body = json.dumps(
        [[job_id], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": RUN_TRAINING_JOB,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr([job_id]),
            "kwargsrepr": "{}",
            "origin": origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


class RedisEnqueuer:
    """An :class:`Enqueuer` for a Redis broker: one ``LPUSH`` of :func:`task_message` onto the
    queue's list (the list kombu's Redis transport reads for priority 0), on a kept connection.

    Celery's ``send_task`` pushes the same message, but it builds a producer, reads the
    queue's bindings and takes a connection from its pool on every call: about four times the
    CPU of this publish. A refused push is retried twice (0.2 s, then 0.4 s apart); a message
    pushed twice is harmless (the second claim finds nothing).
    """

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._redis = redis.Redis.from_url(
            broker_url,
            socket_connect_timeout=5,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.2), retries=2),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self._origin = f"{os.getpid()}@{socket.gethostname()}"
        self._reply_to = str(uuid.uuid4())

    def enqueue_job(self, job_id: str, queue: str) -> None:
        """Push ``run_training_job(job_id)`` onto ``queue``."""
        message = task_message(
            job_id, queue, task_id=str(uuid.uuid4()), origin=self._origin, reply_to=self._reply_to
        )
        self._redis.lpush(queue, json.dumps(message))
        logger.info("enqueued job %s on %s", job_id, queue)

    def close(self) -> None:
        """Release the broker connection."""
        self._redis.close()


def enqueuer_for(broker_url: str) -> CeleryEnqueuer | RedisEnqueuer:
    """The publisher for ``broker_url``: :class:`RedisEnqueuer` on Redis, Celery's client on
    any other broker (the embedded mode's ``sqla+sqlite``)."""
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisEnqueuer(broker_url)
    return CeleryEnqueuer(broker_url)
