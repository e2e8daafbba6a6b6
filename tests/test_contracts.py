"""String contracts between boxes that may not import each other."""

from __future__ import annotations

from api import queue
from worker import celery_app


def test_api_enqueues_the_task_the_worker_registers() -> None:
    # the API never imports the worker: the task name and queue are a contract by value
    assert queue.RUN_TRAINING_JOB == celery_app.RUN_TRAINING_JOB
    assert queue.TRAINING_QUEUE == celery_app.TRAINING_QUEUE
    assert celery_app.RUN_TRAINING_JOB in celery_app.app.tasks or _registered()


def _registered() -> bool:
    import worker.tasks  # noqa: F401  (registers the tasks on the app)

    return celery_app.RUN_TRAINING_JOB in celery_app.app.tasks
