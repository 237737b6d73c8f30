"""The one logging set-up of twostage's entry points: the ``twostage`` CLI and ``python -m`` benchmarks.

Library modules only log (``logging.getLogger(__name__)``) and never configure handlers; an entry point
calls :func:`setup_logging` once, after parsing its arguments. Log records go to **stderr** (through
rich's handler at a terminal), so stdout carries nothing but the command's output (``twostage search
--json`` is parseable as is).

Verbosity: ``-1`` (``-q``) errors only, ``0`` warnings (the CLI's default), ``1`` (``-v``) progress
information, ``2`` or more (``-vv``) debug details.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

# The name of the handler setup_logging installs on the root logger: a second call replaces it, so
# calling twice leaves one handler (and leaves handlers of others, e.g. pytest's, alone).
HANDLER_NAME = "twostage"

# opensearch-py logs every failed request with a traceback; our one-line errors say what went wrong.
_QUIET_BELOW_INFO = ("opensearch",)


def level_for(verbosity: int) -> int:
    """The logging level of a verbosity: -1 → ERROR, 0 → WARNING, 1 → INFO, 2+ → DEBUG."""
    levels = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    return levels[min(max(verbosity, -1), 2) + 1]


def setup_logging(verbosity: int = 0) -> None:
    """Log records at :func:`level_for` ``(verbosity)`` and above to stderr.

    At a terminal through rich's handler (time, coloured level, wrapped to the terminal's width); to a
    file or a pipe one plain line per record (``time LEVEL logger: message``), which ``grep`` can read.
    Only entry points call this (it configures the root logger of the process); a second call replaces
    the handler the first installed.
    """
    from rich.console import Console

    level = level_for(verbosity)
    console = Console(stderr=True)  # looks up sys.stderr when it writes, not once now
    handler: logging.Handler
    if console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # No level on the handler: a logger set below the root's level (the service's access lines) still shows.
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_BELOW_INFO:
        logging.getLogger(name).setLevel(level if verbosity >= 1 else logging.CRITICAL)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes to ``sys.stderr`` as it is when a record arrives (not when it was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (repeatable), mutually exclusive; read with :func:`verbosity`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="log errors only")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log progress (-v) or debug details (-vv); default: warnings"
    )


def verbosity(args: argparse.Namespace, *, default: int = 0) -> int:
    """The verbosity the flags ask for: -1 if ``--quiet``, else ``default`` plus the count of ``-v``."""
    return -1 if args.quiet else default + int(args.verbose)
