"""A bounded, expiring result cache for head queries (cachetools' TTL cache behind a lock)."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")


class ResultCache(Generic[V]):
    """At most ``maxsize`` entries, each kept ``ttl_s`` seconds; least recently used evicted first.

    Thread-safe. Keys must capture everything that changes the answer (query text, configuration, k,
    budget); :meth:`stats` reports hits and misses for metrics.
    """

    def __init__(self, maxsize: int = 10_000, ttl_s: float = 3600.0) -> None:
        if maxsize < 1 or ttl_s <= 0:
            raise ValueError("maxsize must be ≥ 1 and ttl_s > 0")
        self._cache: TTLCache[Hashable, V] = TTLCache(maxsize=maxsize, ttl=ttl_s)
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
