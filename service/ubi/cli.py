"""``twostage log``: maintain the query and event log of a service's data directory.

``twostage log purge --older-than DAYS`` deletes, in one transaction, query records older than DAYS
and events received more than DAYS ago. It may run while the service serves (SQLite waits for the
writer's current commit).
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_float
from twostage_search.engine.errors import InputError
from twostage_search.service.ubi.records import DEFAULT_DATA_DIR, iso, utc_now

DATA_DIR_ENV = "TWOSTAGE_DATA_DIR"


def add_log_parser(sub: Any) -> None:
    g = sub.add_parser("log", help="maintain the service's query and event log (UBI)")
    actions = g.add_subparsers(dest="log_command", required=True)
    p = actions.add_parser("purge", help="delete log records older than DAYS (atomically)")
    p.add_argument("--older-than", required=True, type=positive_float, metavar="DAYS", help="age in days")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the service's data directory (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})",
    )


def log_from_args(args: argparse.Namespace) -> int:
    """Run ``twostage log ACTION``; print one summary line."""
    from twostage_search.service.ubi.sqlite import FILENAME, SQLiteLogStore

    data_dir = args.data_dir or Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
    path = data_dir / FILENAME
    if not path.is_file():  # purging must not create an empty log where none was
        raise InputError(f"no query and event log at {path}")
    before = utc_now() - timedelta(days=args.older_than)
    store = SQLiteLogStore(path)
    try:
        count = store.purge(before)
    finally:
        store.close()
    print(f"{path}: purged {count.queries} query records and {count.events} events from before {iso(before)}")
    return 0
