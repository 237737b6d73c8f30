"""``twostage log``: maintain the query and event log of a service (SQLite or OpenSearch, ``--store``).

``twostage log purge --older-than DAYS`` deletes query records older than DAYS and events received more
than DAYS ago: in one transaction (SQLite), or with one ``delete_by_query`` per index (OpenSearch). It
may run while the service serves (SQLite waits for the writer's current commit).
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from twostage_search.engine.argtypes import positive_float
from twostage_search.service.ubi.records import iso, utc_now
from twostage_search.service.ubi.stores import add_store_args, store_from_args


def add_log_parser(sub: Any) -> None:
    g = sub.add_parser("log", help="maintain the service's query and event log (UBI)")
    actions = g.add_subparsers(dest="log_command", required=True)
    p = actions.add_parser("purge", help="delete log records older than DAYS (atomically)")
    p.add_argument("--older-than", required=True, type=positive_float, metavar="DAYS", help="age in days")
    add_store_args(p)


def log_from_args(args: argparse.Namespace) -> int:
    """Run ``twostage log ACTION``; print one summary line."""
    store, where = store_from_args(args)  # purging must not create an empty log where none was
    before = utc_now() - timedelta(days=args.older_than)
    try:
        count = store.purge(before)
    finally:
        store.close()
    print(f"{where}: purged {count.queries} query records and {count.events} events from before {iso(before)}")
    return 0
