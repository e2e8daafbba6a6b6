"""Enqueue training jobs on the Celery broker by task *name*: the API never imports worker code.

The broker carries only the job id (ARCHITECTURE.md decision 1); the worker loads everything else
from SQL. The task name below is the contract with ``worker/`` (docs/decisions/0002).
"""

from __future__ import annotations

import logging
from typing import Protocol

from celery import Celery

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
