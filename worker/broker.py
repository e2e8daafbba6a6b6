"""What the broker holds: the job ids its training messages cover (for the queue reconciler).

SQL is the truth for the queue; a message is only a hint that a worker should look at a job.
The reconciler asks which queued jobs a message still covers, waiting in the queue or taken by
a worker and not yet acknowledged, and publishes the others again. Only Redis (the production
broker) can be asked; the embedded SQLite broker is durable and answers None ("cannot tell").
"""

from __future__ import annotations

import re

import redis

#: kombu's Redis transport: one list per priority step, unacknowledged messages in a hash
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"
_JOB_ID = re.compile(rb"job-[0-9a-f]{24}")


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps ``queue``'s messages in."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def covered_jobs(broker_url: str, queue: str, timeout_s: float = 5.0) -> set[str] | None:
    """Ids of the jobs some message on ``queue`` names, or None for a broker we cannot read.

    Raises ``redis.RedisError`` (or ``OSError``) when the broker does not answer.
    """
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    client = redis.Redis.from_url(
        broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    with client:
        messages: list[bytes | str] = []
        for key in queue_keys(queue):
            messages += client.lrange(key, 0, -1)
        messages += client.hvals(UNACKED_KEY)
    found: set[str] = set()
    for message in messages:  # the job id is the task's only argument (in its argsrepr header)
        raw = message.encode() if isinstance(message, str) else message
        found |= {match.decode() for match in _JOB_ID.findall(raw)}
    return found
