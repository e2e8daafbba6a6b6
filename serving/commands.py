"""Calls an engine runs on its own thread, between steps: any thread queues one and gets a future
for its result; the engine thread runs them in order. Engines share the lock (``wake``) that
guards their other state, and are woken when a call arrives."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from serving.errors import EngineClosedError

#: What a call returns when it resolves its future itself, later.
PENDING = object()


class Commands:
    def __init__(self, wake: threading.Condition) -> None:
        self._wake = wake
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self._queue)

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue ``fn`` for the engine thread; ``EngineClosedError`` once the engine is closed."""
        future: Future[Any] = Future()
        with self._wake:
            if self.closed:
                raise EngineClosedError("the engine is closed")
            self._queue.append((fn, future))
            self._wake.notify()
        return future

    def close(self) -> None:
        """Refuse calls from now on, and wake the engine thread to stop."""
        with self._wake:
            self.closed = True
            self._wake.notify()

    def run(self) -> None:
        """Run the queued calls (on the engine thread); a call that raises fails its own future
        and the engine goes on."""
        while True:
            with self._wake:
                if not self._queue:
                    return
                fn, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except Exception as exc:  # reported to the caller
                future.set_exception(exc)
            else:
                if result is not PENDING:
                    future.set_result(result)

    def fail(self, message: str) -> None:
        """Fail every queued call (the engine is stopping)."""
        with self._wake:
            calls, self._queue = self._queue, deque()
        for _, future in calls:
            future.set_exception(EngineClosedError(message))
