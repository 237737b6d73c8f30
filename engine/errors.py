"""Exceptions raised by twostage. Every user-facing failure is a :class:`TwoStageError`.

Two kinds, told apart by class: a :class:`UsageError` is the caller's to fix (a bad argument, a missing
file, malformed input; CLI exit status 2, HTTP 4xx); any other :class:`TwoStageError` is a failure at run
time of something the command was right to ask for (an unreachable cluster, a failed download, a backend
down, a missing extra; exit status 1). :func:`exit_status` maps one to the other.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2


class TwoStageError(Exception):
    """Base class of the errors twostage reports in one line (a CLI error line, an HTTP error body)."""


class UsageError(TwoStageError):
    """The caller's to fix: run the command again with other arguments or input."""


class InputError(UsageError, ValueError):
    """Malformed or invalid input: a bad JSONL line, an empty query, an out-of-range parameter."""


class UnknownBackendError(UsageError, KeyError):
    """A name that is not in a registry (reranker, index backend, encoder)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(TwoStageError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class IndexLoadError(UsageError):
    """An index directory is missing, incomplete or of an unknown backend."""


class BackendUnavailableError(TwoStageError):
    """A backend (search cluster, model server) cannot be reached or keeps failing; retry later.

    The service answers it with 503 and ``Retry-After``.
    """


def exit_status(exc: BaseException) -> int:
    """The exit status of a command that failed with ``exc``: 2 for bad usage, 1 for a failure at run time.

    Bad usage is a :class:`UsageError` or a path the caller named that is missing, not a directory, a
    directory where a file belongs, or not accessible. Any other error (another :class:`TwoStageError`,
    a network or disk :class:`OSError`) is a failure at run time.
    """
    usage = (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    return EXIT_USAGE if isinstance(exc, usage) else EXIT_FAILURE
