"""An experiment end to end with simulated users: serve two arms, log searches and clicks, report.

    python -m twostage_search.benchmarks.studies.online_live --dataset ../shared/datasets/trec-dl-2019-passage \\
        --index var/online_sim/index-dl19-bm25 --impressions 400 --out runs/online_live

1. Starts ``twostage serve`` (a real uvicorn process on a free local port) on ``--index`` with
   ``--experiment`` (default: the first stage alone against ``onnx-cross-encoder`` on the top 20,
   interleaved; ``--mode split`` serves the same arms as an A/B split) and the query and event log on,
   in SQLite under ``--data-dir`` (default: a temporary directory).
2. Sends ``--impressions`` searches as ``--users`` simulated users would: each search is a user drawn
   at random (``user_id``, so a split assigns users to arms) asking a judged query drawn at random.
   The user reads the served top ``--k`` with a cascade click model
   (:mod:`~twostage_search.benchmarks.click_models`, navigational by default) on the query's graded
   judgements, and the page's events go to ``POST /events`` in the UBI shape: one ``impression`` per
   shown document and one ``click`` per clicked one, each with the answer's ``query_id``, its document
   and its position. Seeded: the same arguments send the same searches and clicks.
3. Stops the service and runs ``twostage report`` on the log, which writes ``report.md``,
   ``report.json`` and ``report.png`` to ``--out``; ``online_live.json`` there records the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.click_models import CLICK_MODELS, CascadeModel, map_grades
from twostage_search.benchmarks.datasets import load_beir
from twostage_search.benchmarks.evaluation import machine
from twostage_search.benchmarks.serve import ServeProcess, read_experiment
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "online-live.yaml"
LOG_FILE = "ubi.sqlite3"  # the service's SQLite log in its data directory
RETRIES = 5


def experiment_file(source: Path, mode: str | None, data_dir: Path) -> Path:
    """The experiment to serve: ``source``, or a copy of it in ``data_dir`` with its ``mode`` replaced."""
    if mode is None:
        return source
    import yaml

    config = read_experiment(source)
    config["mode"] = mode
    path = data_dir / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class LiveService(ServeProcess):
    """``twostage serve`` in a subprocess on a free local port, with the UBI log in ``data_dir``."""

    def __init__(self, index: Path, experiment: Path, data_dir: Path, timeout_s: float = 300.0) -> None:
        super().__init__(
            index,
            experiment,
            data_dir,
            env={"TWOSTAGE_LOG_ENABLED": "true", "TWOSTAGE_REQUEST_TIMEOUT_S": "120"},
            timeout_s=timeout_s,
        )

    def post(self, path: str, body: Any) -> Any:
        """POST JSON; 429 and 503 are retried after ``Retry-After``; any other error answer fails."""
        for _ in range(RETRIES):
            resp = self.client.post(f"{self.base}{path}", json=body)
            if resp.status_code in (429, 503):
                time.sleep(float(resp.headers.get("Retry-After", 1)))
                continue
            if resp.status_code != 200:
                raise TwoStageError(f"{path} answered {resp.status_code}: {resp.text[:300]}")
            return resp.json()
        raise TwoStageError(f"{path}: refused {RETRIES} times (see {self.log_path})")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (the run record names no home)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def page_events(
    query_id: str, user: str, hits: Sequence[str], clicked: Sequence[bool], shown_at: datetime
) -> list[dict[str, Any]]:
    """What a results page sends for one search: an ``impression`` per shown document, then its clicks.

    The user reads top down (a cascade), so the click on position ``i`` is stamped ``i`` seconds after
    the page was shown: the report takes the earliest click as the first one.
    """

    def event(action: str, position: int, at: datetime) -> dict[str, Any]:
        return {
            "action_name": action,
            "query_id": query_id,
            "client_id": user,
            "session_id": f"session-{user}",
            "timestamp": _iso(at),
            "event_attributes": {"object": {"object_id": hits[position - 1]}, "position": {"ordinal": position}},
        }

    events = [event("impression", i, shown_at) for i in range(1, len(hits) + 1)]
    events += [event("click", i, shown_at + timedelta(seconds=i)) for i in range(1, len(hits) + 1) if clicked[i - 1]]
    return events


def simulate(
    service: LiveService,
    queries: Sequence[tuple[str, str]],
    grades: Mapping[str, Mapping[str, int]],
    model: CascadeModel,
    *,
    impressions: int,
    users: int,
    k: int,
    seed: int,
) -> dict[str, Any]:
    """Send the searches and the events; the counts of what was sent and acknowledged."""
    rng = np.random.default_rng(seed)
    sent = {"searches": 0, "events": 0, "impressions": 0, "clicks": 0, "searches_with_click": 0, "degraded": 0}
    arms: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(impressions):
        user = f"user-{int(rng.integers(users)):04d}"
        qid, text = queries[int(rng.integers(len(queries)))]
        query_id = f"live-{seed}-{i:05d}"  # sent, so the interleaving coin (seeded by it) is reproducible
        answer = service.post("/search", {"query": text, "k": k, "user_id": user, "query_id": query_id})
        hits = [h["doc_id"] for h in answer["hits"]]
        arms[answer["arm"]] = arms.get(answer["arm"], 0) + 1
        sent["degraded"] += bool(answer.get("degraded"))
        row = np.array([[grades.get(qid, {}).get(d, 0) for d in hits]], dtype=np.int64).reshape(1, len(hits))
        clicked = model.clicks(row, rng)[0].tolist()
        events = page_events(answer["query_id"], user, hits, clicked, datetime.now(UTC))
        stored = service.post("/events", events)["stored"] if events else 0  # an empty page sends nothing
        if stored != len(events):
            raise TwoStageError(f"/events stored {stored} of {len(events)} events")
        sent["searches"] += 1
        sent["events"] += len(events)
        sent["impressions"] += len(hits)
        sent["clicks"] += sum(clicked)
        sent["searches_with_click"] += any(clicked)
        if (i + 1) % 50 == 0:
            log.info("%d / %d searches (%.1f s)", i + 1, impressions, time.perf_counter() - started)
    return {**sent, "served_by": arms, "seconds": round(time.perf_counter() - started, 1)}


def run_report(data_dir: Path, experiment: Path, out: Path) -> dict[str, Any]:
    """``twostage report`` on the log (a subprocess: the report is the service's): its JSON."""
    cmd = [sys.executable, "-m", "twostage_search.cli", "report", "--data-dir", str(data_dir)]
    cmd += ["--config", str(experiment), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TWOSTAGE_LOG_STORE": "sqlite"})
    if done.returncode != 0:
        raise TwoStageError(f"twostage report exited with status {done.returncode}: {done.stderr.strip()[-1000:]}")
    print(done.stdout, end="")
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.online_live",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", type=Path, required=True, help="BEIR dir with queries.jsonl and graded qrels/SPLIT.tsv")
    p.add_argument("--split", default="test", help="qrels split")
    p.add_argument("--index", type=Path, required=True, help="index the service searches (twostage index)")
    p.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT, help="experiment file the service serves")
    p.add_argument("--mode", choices=("interleave", "split"), default=None, help="replace the file's mode")
    p.add_argument("--model", choices=list(CLICK_MODELS), default="navigational", help="cascade click model")
    p.add_argument("--grades", type=int, nargs=2, metavar=("LO", "HI"), help="grade scale (default: the qrels')")
    p.add_argument("--impressions", type=int, default=400, help="searches to send (one results page each)")
    p.add_argument("--users", type=int, default=200, help="distinct simulated users")
    p.add_argument("--k", type=int, default=10, help="results on the page")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--data-dir", type=Path, default=None, help="the service's data directory (default: temporary)")
    p.add_argument("--out", type=Path, default=Path("runs/online_live"))
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.impressions < 1 or args.users < 1 or args.k < 1:
        p.error("--impressions, --users and --k must be at least 1")
    return args


def run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The whole run with the service's data in ``data_dir``: what was sent, and the report."""
    if not (args.index / "meta.json").is_file():
        raise InputError(f"no index at {args.index} (build one with `twostage index`)")
    if (data_dir / LOG_FILE).exists():
        raise InputError(f"{data_dir} holds a log already: give an empty --data-dir")
    data = load_beir(args.dataset, args.split).head(args.limit)
    grades = map_grades(data.qrels, tuple(args.grades) if args.grades else None)
    queries = [(q.query_id, q.text) for q in data.queries]
    data_dir.mkdir(parents=True, exist_ok=True)
    experiment = experiment_file(args.experiment, args.mode, data_dir)
    service = LiveService(args.index, experiment, data_dir)
    try:
        sent = simulate(
            service,
            queries,
            grades,
            CLICK_MODELS[args.model],
            impressions=args.impressions,
            users=args.users,
            k=args.k,
            seed=args.seed,
        )
    finally:
        service.close()  # the log is complete: every event was acknowledged, so it is on disk
    args.out.mkdir(parents=True, exist_ok=True)
    report = run_report(data_dir, experiment, args.out)
    record = {
        "dataset": str(args.dataset),
        "queries": len(queries),
        "index": str(args.index),
        "experiment": _shown(args.experiment),
        "mode": report["mode"],
        "click_model": args.model,
        "users": args.users,
        "k": args.k,
        "seed": args.seed,
        "sent": sent,
        "machine": machine(),
    }
    tmp = args.out / ".online_live.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.out / "online_live.json")
    return {**record, "report": report}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(1 if args.verbose else 0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        if args.data_dir is not None:
            result = run(args, args.data_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="online-live-") as tmp:
                result = run(args, Path(tmp))
    except TwoStageError as exc:
        print(f"online_live: {exc}", file=sys.stderr)
        return exit_status(exc)
    sent = result["sent"]
    print(
        f"{sent['searches']} searches, {sent['events']} events ({sent['clicks']} clicks) in {sent['seconds']} s; "
        f"wrote {args.out / 'report.md'}, report.json, report.png and online_live.json"
    )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop the server on the way out
    sys.exit(main())
