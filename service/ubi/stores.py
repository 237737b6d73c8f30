"""Which log store: ``sqlite`` (the embedded default) or ``opensearch``, for the service and the commands.

The service reads ``TWOSTAGE_LOG_STORE`` through its settings; ``twostage log``, ``report`` and ``judge``
take ``--store`` (default: the same variable) and, for OpenSearch, the same ``TWOSTAGE_OPENSEARCH_*``
connection settings as the ``opensearch`` index backend.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.service.ubi.records import DEFAULT_DATA_DIR, LogStore
from twostage_search.service.ubi.sqlite import FILENAME

StoreKind = Literal["sqlite", "opensearch"]
STORES: tuple[StoreKind, ...] = ("sqlite", "opensearch")
DATA_DIR_ENV = "TWOSTAGE_DATA_DIR"
STORE_ENV = "TWOSTAGE_LOG_STORE"
PREFIX_ENV = "TWOSTAGE_LOG_INDEX_PREFIX"
INDEX_PREFIX_PATTERN = r"^([a-z0-9][a-z0-9._-]{0,199})?$"
"""OpenSearch index names are lower case and may not start with ``_``, ``-`` or ``+``."""


def open_store(
    kind: str,
    *,
    data_dir: Path = DEFAULT_DATA_DIR,
    synchronous: Literal["FULL", "NORMAL"] = "FULL",
    index_prefix: str = "",
    refresh: Literal["false", "wait_for"] = "false",
    create: bool = True,
) -> LogStore:
    """The log store ``kind``; with ``create=False`` a log that does not exist yet is an :class:`InputError`."""
    if kind == "sqlite":
        from twostage_search.service.ubi.sqlite import SQLiteLogStore

        if not create and not (data_dir / FILENAME).is_file():  # reading must not create an empty log
            raise InputError(f"no query and event log at {data_dir / FILENAME}")
        return SQLiteLogStore(data_dir, synchronous=synchronous)
    if kind == "opensearch":
        require("opensearchpy", "opensearch")
        from twostage_search.service.ubi.opensearch import OpenSearchLogStore

        return OpenSearchLogStore(prefix=index_prefix, refresh=refresh, create=create)
    raise InputError(f"unknown log store {kind!r} (choose from {', '.join(STORES)})")


def add_store_args(p: argparse.ArgumentParser, *, data_dir: bool = True) -> None:
    """``--store``, ``--data-dir`` (SQLite) and ``--index-prefix`` (OpenSearch) of a command reading the log."""
    p.add_argument("--store", choices=STORES, default=None, help=f"where the log is (default: ${STORE_ENV} or sqlite)")
    if data_dir:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help=f"sqlite: the service's data directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
        )
    p.add_argument(
        "--index-prefix",
        default=None,
        help=f"opensearch: prefix of the ubi_queries / ubi_events indices (default: ${PREFIX_ENV} or none)",
    )


def store_from_args(args: argparse.Namespace) -> tuple[LogStore, str]:
    """The existing log the arguments name, and where it is (for messages)."""
    kind = getattr(args, "store", None) or os.environ.get(STORE_ENV) or "sqlite"
    if kind == "opensearch":
        prefix = args.index_prefix if args.index_prefix is not None else os.environ.get(PREFIX_ENV, "")
        if not re.match(INDEX_PREFIX_PATTERN, prefix):
            raise InputError(f"index prefix {prefix!r}: lower-case letters, digits, '.', '_' or '-'")
        store: Any = open_store(kind, index_prefix=prefix, create=False)
        return store, f"OpenSearch {store.queries_index}/{store.events_index}"
    data_dir = data_dir_from_args(args)
    return open_store(kind, data_dir=data_dir, create=False), str(data_dir / FILENAME)


def data_dir_from_args(args: argparse.Namespace) -> Path:
    return getattr(args, "data_dir", None) or Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
