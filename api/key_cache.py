"""A short-lived cache of the API keys this process has found in SQL, so that a request does
not pay a SQL round trip (and a thread hop) to learn who is calling.

An entry lives ``ttl_s`` seconds. A key revoked through this process (``DELETE /keys/{id}``)
is dropped at once; a key revoked elsewhere (another worker process, ``glmft keys revoke``)
answers 401 once its entry expires, ``ttl_s`` at most. Only keys found are cached: an unknown
key is looked up every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from core.keys import Principal, hash_key

#: seconds a found key is trusted without looking at SQL again
KEY_CACHE_TTL_S = 2.0
#: entries kept at most (oldest dropped first)
KEY_CACHE_SIZE = 4096


class KeyCache:
    """Principals by key digest, each with its expiry."""

    def __init__(
        self,
        ttl_s: float = KEY_CACHE_TTL_S,
        size: int = KEY_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, presented: str) -> Principal | None:
        """The cached principal of ``presented``, or None (absent or expired)."""
        digest = hash_key(presented)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(digest, None)
            return None
        return entry[1]

    def put(self, presented: str, principal: Principal) -> None:
        """Trust ``principal`` for ``presented`` for ``ttl_s`` seconds."""
        if self.ttl_s <= 0:
            return
        while len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))
        self._entries[hash_key(presented)] = (self._clock() + self.ttl_s, principal)

    def forget_key(self, key_id: str) -> None:
        """Drop the entries of one stored key (it was revoked)."""
        for digest, (_, principal) in list(self._entries.items()):
            if principal.key_id == key_id:
                self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()
