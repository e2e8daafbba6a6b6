"""The webhook dispatcher of a worker node: a thread of the worker's main process that sends
due deliveries from SQL every ``webhooks.poll_interval_s`` (``core.webhook_delivery``).

Every node runs one; their claims never overlap. Deliveries live in SQL, so a worker that
stops loses nothing: the next dispatcher sends what is due, and a delivery in flight when a
dispatcher died is retried after its lease. On a warm shutdown the thread finishes the
attempt in flight and records it before the worker exits.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from core.settings import Settings
from core.webhook_delivery import deliver_due, make_client

logger = logging.getLogger(__name__)


class Dispatcher:
    """Runs :func:`core.webhook_delivery.deliver_due` in a loop until :meth:`stop`."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="glmft-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop after the attempt in flight (waiting up to the delivery timeout)."""
        self._stop.set()
        self._thread.join(
            timeout_s if timeout_s is not None else self.settings.webhooks.timeout_s + 5
        )

    def _loop(self) -> None:
        with make_client(self.settings) as client:
            while not self._stop.is_set():
                try:
                    sent = deliver_due(self.engine, self.settings, client, stop=self._stop)
                except Exception:  # a store outage: try again next round
                    logger.exception("webhook dispatch failed")
                    sent = 0
                if not sent:
                    self._stop.wait(self.settings.webhooks.poll_interval_s)
