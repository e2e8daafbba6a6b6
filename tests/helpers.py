"""Small helpers for tests that run real services: polling and free loopback ports."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

#: The Redis server tests use; ``GLMFT_TEST_REDIS`` moves them to another one (e.g. a second
#: server on another port, so that two checkouts can run their suites at once).
REDIS_SERVER = os.environ.get("GLMFT_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")


def redis_url(db: int) -> str:
    """A Redis database of the test server; each test module owns its own number."""
    return f"{REDIS_SERVER}/{db}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
