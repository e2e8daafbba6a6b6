"""API keys found in SQL are trusted for a short while (``api.key_cache``): an entry expires
after its TTL, a revoked key is dropped at once, and the cache keeps a bounded number."""

from __future__ import annotations

from api.key_cache import KeyCache
from core.keys import Principal

READER = Principal("team-a", frozenset({"read"}), "key-1")
WRITER = Principal("team-b", frozenset({"write"}), "key-2")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_its_ttl() -> None:
    clock = Clock()
    cache = KeyCache(ttl_s=2.0, clock=clock)
    cache.put("sk-glmft-a", READER)
    assert cache.get("sk-glmft-a") == READER
    assert cache.get("sk-glmft-other") is None
    clock.now += 2.5
    assert cache.get("sk-glmft-a") is None


def test_a_revoked_key_is_dropped_at_once() -> None:
    cache = KeyCache(ttl_s=60.0)
    cache.put("sk-glmft-a", READER)
    cache.put("sk-glmft-b", WRITER)
    cache.forget_key("key-1")
    assert cache.get("sk-glmft-a") is None
    assert cache.get("sk-glmft-b") == WRITER


def test_the_cache_is_bounded_and_can_be_off() -> None:
    cache = KeyCache(ttl_s=60.0, size=2)
    for i in range(5):
        cache.put(f"sk-glmft-{i}", READER)
    assert [cache.get(f"sk-glmft-{i}") for i in range(5)] == [None, None, None, READER, READER]
    off = KeyCache(ttl_s=0)
    off.put("sk-glmft-a", READER)
    assert off.get("sk-glmft-a") is None
