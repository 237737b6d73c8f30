"""Plan an online experiment before going live: how many impressions A/B and interleaving need.

    python -m twostage_search.benchmarks.studies.online_sim --dataset ../shared/datasets/trec-dl-2019-passage \\
        --index var/dl19-bm25 --experiment benchmarks/experiments/online-sim.yaml --pairs first:ce20 ce10:ce50

1. Starts ``twostage serve`` on ``--index`` with ``--experiment`` and asks it, over HTTP, for each arm's
   ranking of each judged query (the arm named on the request with the admin token). The rankings are
   cached in ``--cache`` (one JSON file per dataset, index and experiment), so a rerun asks only for
   what is missing and needs no server at all when nothing is.
2. Offline: nDCG@10 of each arm's top 10 over the same queries (grades shifted so the lowest is 0).
3. Online, simulated (:mod:`~twostage_search.benchmarks.online_power`): for each pair ``A:B`` and each
   cascade click model (:mod:`~twostage_search.benchmarks.click_models`), ``--runs`` simulated A/B tests
   (CTR, MRR of the first click) and team-draft interleaving tests at 50, 100, ..., 51,200 impressions;
   the impressions each needs for 80% power at p < 0.05 in the direction of the offline nDCG@10
   difference, their ratio, and the direction of each method's verdict against that difference.

Writes ``online_sim.md`` and ``online_sim.json`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.click_models import CLICK_MODELS, expected_ctr_rr, map_grades
from twostage_search.benchmarks.datasets import load_beir
from twostage_search.benchmarks.evaluation import evaluate, machine, mean
from twostage_search.benchmarks.online_power import Grid, MethodPower, pair_lists, simulate_pair
from twostage_search.benchmarks.serve import ServeProcess, read_experiment
from twostage_search.benchmarks.studies.online_table import markdown
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

ADMIN_TOKEN = "online-sim"  # the server is private to this process (127.0.0.1, a free port)
RETRIES = 5
SAVE_EVERY = 20


def _arms_of(experiment: Path) -> dict[str, Any]:
    config = read_experiment(experiment)
    if not isinstance(config.get("arms"), list):
        raise InputError(f"{experiment}: not an experiment file (no list of arms)")
    return {str(a.get("name")): a for a in config["arms"] if isinstance(a, dict)}


class Service(ServeProcess):
    """``twostage serve`` in a subprocess on a free local port, logging off, with an admin token."""

    def __init__(self, index: Path, experiment: Path, data_dir: Path, timeout_s: float = 300.0) -> None:
        super().__init__(
            index,
            experiment,
            data_dir,
            env={
                "TWOSTAGE_LOG_ENABLED": "false",
                "TWOSTAGE_ADMIN_TOKEN": ADMIN_TOKEN,
                "TWOSTAGE_REQUEST_TIMEOUT_S": "120",
            },
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout_s=timeout_s,
        )

    def ranking(self, arm: str, text: str, k: int) -> list[str]:
        """The arm's top-k document ids for a query; refused or degraded answers are retried, then fail."""
        body = {"query": text, "k": k, "arm": arm, "user_id": "online-sim"}
        for attempt in range(RETRIES):
            resp = self.client.post(f"{self.base}/search", json=body)
            if resp.status_code in (429, 503):
                time.sleep(float(resp.headers.get("Retry-After", 1)))
                continue
            if resp.status_code != 200:
                raise TwoStageError(f"/search on arm {arm!r} answered {resp.status_code}: {resp.text[:300]}")
            answer = resp.json()
            if not answer.get("degraded"):
                return [h["doc_id"] for h in answer["hits"]]
            log.warning("arm %s: degraded answer (attempt %d), asking again", arm, attempt + 1)
        raise TwoStageError(f"arm {arm!r}: no complete answer after {RETRIES} attempts for query {text!r}")


def rankings(
    args: argparse.Namespace, queries: Sequence[tuple[str, str]], arms: Sequence[str]
) -> dict[str, dict[str, list[str]]]:
    """Each arm's ranking of each query: from the cache, else from the service (and then cached)."""
    configs = _arms_of(args.experiment)
    unknown = [a for a in arms if a not in configs]
    if unknown:
        raise InputError(f"{args.experiment}: no arm {', '.join(map(repr, unknown))} (has {', '.join(configs)})")
    name = f"{args.dataset.resolve().name}--{args.index.name}--{args.experiment.stem}.json"
    path = args.cache / name
    cached: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    result: dict[str, dict[str, list[str]]] = {}
    for arm in arms:
        entry = cached.get(arm, {})
        fresh = entry.get("config") == configs[arm] and entry.get("k", 0) >= args.fetch_k
        result[arm] = dict(entry.get("rankings", {})) if fresh else {}
    missing = [(arm, q) for arm in arms for q in queries if q[0] not in result[arm]]

    def save() -> None:  # atomically, after every SAVE_EVERY answers: an interrupted run keeps its work
        for arm in arms:
            cached[arm] = {"config": configs[arm], "k": args.fetch_k, "rankings": result[arm]}
        args.cache.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(cached, indent=1) + "\n")
        tmp_path.replace(path)

    if missing:
        log.info("asking the service for %d rankings (%s)", len(missing), path)
        with tempfile.TemporaryDirectory() as tmp:
            service = Service(args.index, args.experiment, Path(tmp))
            try:
                for i, (arm, (qid, text)) in enumerate(missing):
                    result[arm][qid] = service.ranking(arm, text, args.fetch_k)
                    if (i + 1) % SAVE_EVERY == 0:
                        save()
                        log.info("%d / %d rankings", i + 1, len(missing))
            finally:
                service.close()
                save()
    return {arm: {qid: result[arm][qid][: args.fetch_k] for qid, _ in queries} for arm in arms}


def _sign(x: float) -> int:
    return 0 if abs(x) < 1e-12 else (1 if x > 0 else -1)


def simulate(
    args: argparse.Namespace,
    qrels: Mapping[str, Mapping[str, int]],
    query_ids: Sequence[str],
    ranked: Mapping[str, Mapping[str, list[str]]],
) -> list[dict[str, Any]]:
    """One row per (pair, click model): offline nDCG@10, expected effects, each method's power."""
    scale = tuple(args.grades) if args.grades else None
    mapped = map_grades(qrels, scale)
    lo = min(g for docs in qrels.values() for g in docs.values()) if scale is None else scale[0]
    shifted = {q: {d: g - lo for d, g in docs.items()} for q, docs in qrels.items()}
    grid = Grid(sizes=tuple(args.sizes), runs=args.runs, alpha=args.alpha, power=args.power, seed=args.seed)
    ndcg = {
        arm: evaluate(shifted, query_ids, {q: r[: args.k] for q, r in ranks.items()}, ["nDCG@10"], drop_query_id=False)
        for arm, ranks in ranked.items()
    }
    grades = [mapped.get(q, {}) for q in query_ids]
    rows = []
    for a, b in args.pairs:
        lists = pair_lists([ranked[a][q] for q in query_ids], [ranked[b][q] for q in query_ids], grades, args.k)
        delta = mean(ndcg[b]["nDCG@10"]) - mean(ndcg[a]["nDCG@10"])
        for model_name in args.models:
            model = CLICK_MODELS[model_name]
            exp_a = [expected_ctr_rr(model, [max(g, 0) for g in row if g >= 0]) for row in lists.a]
            exp_b = [expected_ctr_rr(model, [max(g, 0) for g in row if g >= 0]) for row in lists.b]
            started = time.perf_counter()
            methods = simulate_pair(lists, model, grid, _sign(delta))
            log.info("%s:%s %s simulated in %.1fs", a, b, model_name, time.perf_counter() - started)
            rows.append(
                {
                    "pair": f"{a}:{b}",
                    "a": a,
                    "b": b,
                    "model": model_name,
                    "ndcg10_a": round(mean(ndcg[a]["nDCG@10"]), 4),
                    "ndcg10_b": round(mean(ndcg[b]["nDCG@10"]), 4),
                    "ndcg10_delta": round(delta, 4),
                    "expected_ctr_delta": round(mean([e[0] for e in exp_b]) - mean([e[0] for e in exp_a]), 5),
                    "expected_mrr_delta": round(mean([e[1] for e in exp_b]) - mean([e[1] for e in exp_a]), 5),
                    "methods": {m.method: _method_dict(m, delta) for m in methods},
                }
            )
    return rows


def _method_dict(m: MethodPower, ndcg_delta: float) -> dict[str, Any]:
    """The method's numbers, and its verdict: the direction most runs found significant at the largest size."""
    d = asdict(m)
    d["effect"] = round(m.effect, 5)
    expected = _sign(ndcg_delta) or 1
    verdict = expected if m.significant_right >= 0.5 else -expected if m.significant_wrong >= 0.5 else 0
    d["verdict"] = {1: "B better", -1: "A better", 0: "none"}[verdict]
    d["agrees_with_ndcg"] = None if verdict == 0 else verdict == _sign(ndcg_delta)
    return d


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b or a == b:
        raise argparse.ArgumentTypeError(f"a pair is A:B with two different arm names, got {text!r}")
    return a, b


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.online_sim",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", type=Path, required=True, help="BEIR dir with queries.jsonl and graded qrels/SPLIT.tsv")
    p.add_argument("--split", default="test", help="qrels split")
    p.add_argument("--index", type=Path, required=True, help="index the service searches (twostage index)")
    p.add_argument("--experiment", type=Path, default=Path("benchmarks/experiments/online-sim.yaml"))
    p.add_argument("--pairs", type=_pair, nargs="+", default=[("first", "ce20"), ("ce10", "ce50")], help="A:B")
    p.add_argument("--models", nargs="+", choices=list(CLICK_MODELS), default=list(CLICK_MODELS))
    p.add_argument("--grades", type=int, nargs=2, metavar=("LO", "HI"), help="grade scale (default: the qrels')")
    p.add_argument("--k", type=int, default=10, help="results shown to a simulated user")
    p.add_argument("--fetch-k", type=int, default=20, help="results asked of each arm (team-draft reads below k)")
    p.add_argument("--runs", type=int, default=50, help="simulated experiments per size")
    p.add_argument("--sizes", type=int, nargs="+", default=list(Grid().sizes), help="impression counts to test")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N judged queries")
    p.add_argument("--cache", type=Path, default=Path("var/online_sim"), help="where arms' rankings are kept")
    p.add_argument("--out", type=Path, default=Path("runs/online_sim"))
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.k < 1 or args.fetch_k < args.k:
        p.error("--k must be at least 1 and --fetch-k at least --k")
    if args.runs < 1 or any(n < 2 for n in args.sizes):
        p.error("--runs must be at least 1 and every size at least 2")
    args.sizes = sorted(set(args.sizes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(1 if args.verbose else 0)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        if not (args.index / "meta.json").is_file():
            raise InputError(f"no index at {args.index} (build one with `twostage index`)")
        data = load_beir(args.dataset, args.split)
        queries = [(q.query_id, q.text) for q in data.queries][: args.limit]
        arms = sorted({arm for pair in args.pairs for arm in pair})
        ranked = rankings(args, queries, arms)
        rows = simulate(args, data.qrels, [q for q, _ in queries], ranked)
    except TwoStageError as exc:
        print(f"online_sim: {exc}", file=sys.stderr)
        return exit_status(exc)
    report = {
        "dataset": str(args.dataset),
        "queries": len(queries),
        "index": str(args.index),
        "experiment": str(args.experiment),
        "k": args.k,
        "grid": asdict(Grid(tuple(args.sizes), args.runs, args.alpha, args.power, args.seed)),
        "machine": machine(),
        "rows": rows,
    }
    table = markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("online_sim.md", table), ("online_sim.json", json.dumps(report, indent=1) + "\n")):
        tmp = args.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(args.out / name)
    print(f"wrote {args.out / 'online_sim.md'} and online_sim.json")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop the server, keep the cache
    sys.exit(main())
