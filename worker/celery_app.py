"""The Celery app of a worker node: ``celery -A worker worker -Q training [-B]``.

Celery carries only job ids; the SQL store is the truth. Training tasks ack late with one message
prefetched at a time, so a node takes jobs only when it can start them.
"""

from __future__ import annotations

from celery import Celery

from core.settings import Settings, get_settings

# Task names are the contract with the API, which enqueues by name (api/queue.py).
RUN_TRAINING_JOB = "worker.tasks.run_training_job"
REAP_STALE_JOBS = "worker.tasks.reap_stale_jobs"
TRAINING_QUEUE = "training"


def create_celery(settings: Settings) -> Celery:
    celery = Celery("glmft", broker=settings.resolved_broker_url, include=["worker.tasks"])
    celery.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=TRAINING_QUEUE,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reap-stale-jobs": {
                "task": REAP_STALE_JOBS,
                "schedule": max(1.0, settings.heartbeat_timeout_s / 3),
                "options": {"queue": TRAINING_QUEUE},
            }
        },
    )
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        # Training messages are acked at the end of a run that may last a day; Redis would
        # otherwise redeliver them after an hour. A redelivery is harmless (the claim is
        # conditional), and a dead worker's job is recovered by the reaper, not by redelivery.
        # (Other transports reject this option: the SQLite broker passes it to create_engine.)
        celery.conf.broker_transport_options = {"visibility_timeout": 24 * 3600}
    return celery


app = create_celery(get_settings())
