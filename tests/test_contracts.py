"""String contracts between boxes that may not import each other."""

from __future__ import annotations

from api import queue
from tests.helpers import redis_url
from worker import celery_app


def test_api_enqueues_the_task_the_worker_registers() -> None:
    # the API never imports the worker: the task name and queue are a contract by value
    assert queue.RUN_TRAINING_JOB == celery_app.RUN_TRAINING_JOB
    assert queue.TRAINING_QUEUE == celery_app.TRAINING_QUEUE
    assert celery_app.RUN_TRAINING_JOB in celery_app.app.tasks or _registered()


def _registered() -> bool:
    import worker.tasks  # noqa: F401  (registers the tasks on the app)

    return celery_app.RUN_TRAINING_JOB in celery_app.app.tasks


def test_redis_only_transport_options_stay_off_other_brokers() -> None:
    # the SQLite broker of the embedded mode hands transport options to create_engine
    from core.settings import Settings

    embedded = celery_app.create_celery(Settings(broker_url="sqla+sqlite:////tmp/b.db"))
    redis_app = celery_app.create_celery(Settings(broker_url=redis_url(0)))
    assert not embedded.conf.broker_transport_options
    assert redis_app.conf.broker_transport_options["visibility_timeout"] >= 24 * 3600
