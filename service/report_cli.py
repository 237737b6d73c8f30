"""``twostage report``: the experiment report from a service's query and event log.

Prints the Markdown tables (arms, differences against the control or interleaving wins, quality per
cost, sample-ratio check); with ``--out DIR`` also writes ``report.md``, ``report.json`` and the plot
``report.png`` there. ``--config`` gives the experiment file the service ran (control arm, weights, mode).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from twostage_search.engine.errors import InputError
from twostage_search.service.ubi.stores import add_store_args, store_from_args


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="the experiment report (CTR, MRR, interleaving wins, cost) from the log")
    add_store_args(p)
    p.add_argument("--experiment", default=None, metavar="NAME", help="experiment to report (default: the last logged)")
    p.add_argument(
        "--config", type=Path, default=None, metavar="FILE", help="the experiment file (control, weights, mode)"
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write report.md, report.json, report.png")
    p.add_argument(
        "--click-action",
        action="append",
        default=None,
        metavar="NAME",
        help="event action_name counted as a click (repeat; default: click)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")


def report_from_args(args: argparse.Namespace) -> int:
    """Run ``twostage report``."""
    from twostage_search.service.experiment import ExperimentError, load_experiment
    from twostage_search.service.report_output import markdown, report_for, write_report

    config = None
    if args.config is not None:
        try:
            config = load_experiment(args.config)
        except ExperimentError as exc:
            raise InputError(str(exc)) from None
    store, _ = store_from_args(args)  # reading must not create an empty log
    try:
        report = report_for(
            store, experiment=args.experiment, config=config, click_actions=args.click_action or ["click"]
        )
    finally:
        store.close()
    print(json.dumps(report.as_dict(), indent=2) if args.json else markdown(report), end="" if not args.json else "\n")
    if args.out is not None:
        for written in write_report(report, args.out):
            print(f"wrote {written}")
    return 0
