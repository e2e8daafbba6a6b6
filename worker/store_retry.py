"""Backoff for a store that stopped answering, while the work it records goes on.

The runner asks :meth:`StoreRetry.due` before touching the store: after a failure the next try
waits 1 s, then 2, 4, ... up to ``max_wait_s`` (10 s); a success resets it. :meth:`given_up`
says when the store has been away longer than ``limit_s`` (the runner then stops its trainer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StoreRetry:
    limit_s: float
    first_wait_s: float = 1.0
    max_wait_s: float = 10.0
    needs_resync: bool = False  # a write failed: where it got to must be read back first
    _failures: int = 0
    _down_since: float | None = None
    _next_try: float = field(default=0.0)

    def due(self) -> bool:
        """Whether to try the store now."""
        return time.monotonic() >= self._next_try

    def wait_s(self) -> float:
        """Seconds until the next try."""
        return max(0.0, self._next_try - time.monotonic())

    def failed(self) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failures += 1
        self.needs_resync = True
        backoff = min(self.max_wait_s, self.first_wait_s * 2 ** (self._failures - 1))
        self._next_try = now + backoff

    def succeeded(self) -> None:
        self._failures = 0
        self._down_since = None
        self._next_try = 0.0

    def down_for(self) -> float:
        """Seconds since the first failure of the current outage (0 when up)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def given_up(self) -> bool:
        return self._down_since is not None and self.down_for() > self.limit_s
