"""The API's publishers: on Redis, one LPUSH of the message Celery's ``send_task`` would push,
read back off the real Redis server and decoded the way a Celery worker decodes it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from kombu import Connection

from api.queue import (
    RUN_TRAINING_JOB,
    TRAINING_QUEUE,
    CeleryEnqueuer,
    RedisEnqueuer,
    enqueuer_for,
)
from core.settings import Settings
from tests.api.conftest import REDIS_URL
from worker.celery_app import create_celery

#: what differs between two messages of the same call: fresh ids, and who sent it
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "origin", "reply_to"}


def _pop(client: redis.Redis) -> dict[str, Any]:
    raw = client.rpop(TRAINING_QUEUE)  # the end a worker's BRPOP takes
    assert isinstance(raw, bytes), "no message on the training queue"
    message: dict[str, Any] = json.loads(raw)
    return message


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in PER_MESSAGE}
    return value


def test_the_redis_publisher_pushes_the_message_celery_pushes(broker: redis.Redis) -> None:
    """The reference is the workers' own Celery app (its transport options included): where
    its ``send_task`` puts the message is where the workers read it."""
    workers_app = create_celery(Settings(broker_url=REDIS_URL))
    ours = RedisEnqueuer(REDIS_URL)
    try:
        workers_app.send_task(RUN_TRAINING_JOB, args=["job-0123"], queue=TRAINING_QUEUE)
        ours.enqueue_job("job-0123", TRAINING_QUEUE)
    finally:
        workers_app.close()
        ours.close()
    from_celery, from_ours = _pop(broker), _pop(broker)
    assert broker.llen(TRAINING_QUEUE) == 0
    assert _without_ids(from_ours) == _without_ids(from_celery)
    assert set(from_ours["headers"]) == set(from_celery["headers"])
    assert set(from_ours["properties"]) == set(from_celery["properties"])
    headers = from_ours["headers"]
    assert headers["task"] == RUN_TRAINING_JOB
    assert headers["root_id"] == headers["id"] == from_ours["properties"]["correlation_id"]
    args, kwargs, _embed = json.loads(base64.b64decode(from_ours["body"]))
    assert (args, kwargs) == (["job-0123"], {})


def test_each_message_has_its_own_task_id_and_delivery_tag(broker: redis.Redis) -> None:
    ours = RedisEnqueuer(REDIS_URL)
    try:
        ours.enqueue_job("job-a", TRAINING_QUEUE)
        ours.enqueue_job("job-b", TRAINING_QUEUE)
    finally:
        ours.close()
    first, second = _pop(broker), _pop(broker)
    assert first["headers"]["argsrepr"] == "['job-a']"
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]


def test_kombu_reads_the_message_back_as_the_task_call(broker: redis.Redis) -> None:
    """The consumer side a Celery worker runs on: kombu's Redis transport takes the message off
    the queue and decodes its body and headers."""
    ours = RedisEnqueuer(REDIS_URL)
    try:
        ours.enqueue_job("job-xyz", TRAINING_QUEUE)
    finally:
        ours.close()
    with Connection(REDIS_URL) as connection:
        queue = connection.SimpleQueue(TRAINING_QUEUE)
        try:
            message = queue.get(timeout=5)
            assert message.headers["task"] == RUN_TRAINING_JOB
            args, kwargs, _embed = message.decode()
            assert (args, kwargs) == (["job-xyz"], {})
            assert message.delivery_info["routing_key"] == TRAINING_QUEUE
            message.ack()
        finally:
            queue.close()


def test_the_publisher_follows_the_broker() -> None:
    redis_side = enqueuer_for(REDIS_URL)
    other = enqueuer_for("sqla+sqlite:///:memory:")
    try:
        assert isinstance(redis_side, RedisEnqueuer)
        assert isinstance(other, CeleryEnqueuer)
    finally:
        redis_side.close()
        other.close()


def test_an_unreachable_broker_raises_after_its_retries() -> None:
    down = RedisEnqueuer("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(redis.ConnectionError):
            down.enqueue_job("job-1", TRAINING_QUEUE)
    finally:
        down.close()
