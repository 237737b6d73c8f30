"""Backends registered by name through package entry points; never guessed from a model name.

Each kind of backend has an entry-point group (``twostage_search.rerankers``,
``twostage_search.index_backends``, ``twostage_search.encoders`` (sparse), ``twostage_search.dense_encoders``,
``twostage_search.llm_backends``).
A third-party package adds a reranker by declaring one in its own ``pyproject.toml``::

    [project.entry-points."twostage_search.rerankers"]
    my-reranker = "my_package.module:MyReranker"

Looking a name up imports only the module that defines it, so nothing heavy loads at import time.
:meth:`Registry.register` adds an entry in-process (tests, notebooks) without packaging.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from twostage_search.engine.errors import UnknownBackendError
from twostage_search.engine.protocols import Encoder, Reranker

T = TypeVar("T")

GROUP_PREFIX = "twostage_search."


class Registry(Generic[T]):
    """Name → backend (a class or factory) for one kind of backend, read from one entry-point group."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._points: dict[str, EntryPoint] | None = None
        self._lock = threading.Lock()

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``entry`` under ``name`` in this process (entry points need packaging)."""

        def decorate(entry: T) -> T:
            with self._lock:
                existing = self._entries.get(name)
                if existing is not None and existing is not entry:
                    raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
                self._entries[name] = entry
            return entry

        return decorate

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._points is None:
            self._points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._points

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._entry_points()))

    def get(self, name: str) -> T:
        with self._lock:
            if name in self._entries:
                return self._entries[name]
        point = self._entry_points().get(name)
        if point is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownBackendError(f"unknown {self.kind} {name!r} (known: {known})")
        entry: T = point.load()
        with self._lock:
            self._entries.setdefault(name, entry)
            return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._entry_points())


# The engine's registries, one per entry-point group.
encoders: Registry[Callable[..., Encoder]] = Registry("encoder", GROUP_PREFIX + "encoders")
rerankers: Registry[Callable[..., Reranker]] = Registry("reranker", GROUP_PREFIX + "rerankers")
index_backends: Registry[Any] = Registry("index backend", GROUP_PREFIX + "index_backends")
dense_encoders: Registry[Callable[..., Any]] = Registry("dense encoder", GROUP_PREFIX + "dense_encoders")
