"""Exceptions raised by twostage. Every user-facing failure is a :class:`TwoStageError`."""

from __future__ import annotations


class TwoStageError(Exception):
    """Base class for errors that are the caller's to fix (bad input, missing files, missing extras)."""


class InputError(TwoStageError, ValueError):
    """Malformed or invalid input: a bad JSONL line, an empty query, an out-of-range parameter."""


class UnknownBackendError(TwoStageError, KeyError):
    """A name that is not in a registry (reranker, index backend, encoder)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(TwoStageError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class IndexLoadError(TwoStageError):
    """An index directory is missing, incomplete or of an unknown backend."""


class BackendUnavailableError(TwoStageError):
    """A backend (search cluster, model server) cannot be reached or keeps failing; retry later.

    The service answers it with 503 and ``Retry-After``.
    """
