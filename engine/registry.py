"""Backends registered by name (cf. ir_measures providers); never guessed from a model name.

A registry knows which package defines its backends and imports it on first lookup, so registering
costs nothing at ``import engine`` time and a backend is one module with one ``@register`` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from engine.errors import UnknownBackendError
from engine.protocols import Encoder, Reranker

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → backend table for one kind of backend (a class or factory function per name)."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self._package = package
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@rerankers.register("identity")`` on a class or factory."""

        def decorate(entry: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
            self._entries[name] = entry
            return entry

        return decorate

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self._package)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownBackendError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries


# The engine's registries. Each imports the package that holds its backends on first lookup.
encoders: Registry[Callable[..., Encoder]] = Registry("encoder", "engine.encoders")
rerankers: Registry[Callable[..., Reranker]] = Registry("reranker", "rerankers")
index_backends: Registry[Any] = Registry("index backend", "indexes")
