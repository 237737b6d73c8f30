"""Bounded caches for results and judgements (cachetools' LRU or TTL cache behind a lock)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from cachetools import Cache, LRUCache, TTLCache

from twostage_search.engine.errors import InputError

V = TypeVar("V")


class ResultCache(Generic[V]):
    """At most ``maxsize`` entries, least recently used evicted first; each kept ``ttl_s`` seconds
    (``None``: until evicted). ``maxsize=0`` stores nothing.

    Thread-safe and shareable between instances (head queries). Keys must capture everything that
    changes the answer (query text, configuration, k, budget, prompt); :meth:`stats` reports hits and
    misses for metrics.
    """

    def __init__(self, maxsize: int = 10_000, ttl_s: float | None = 3600.0) -> None:
        if maxsize < 0:
            raise InputError("cache size must be non-negative")
        if ttl_s is not None and ttl_s <= 0:
            raise InputError("ttl_s must be positive (or None for no expiry)")
        self.maxsize = maxsize
        self._cache: Cache[Hashable, V] = (
            LRUCache(maxsize=max(maxsize, 1)) if ttl_s is None else TTLCache(maxsize=max(maxsize, 1), ttl=ttl_s)
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._cache.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._cache[key] = value

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache)}
