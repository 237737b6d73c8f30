"""LORE-style deployment of the graded model: the ``cascade`` reranker in pair mode serves ``graded`` to every
(query, item) pair and asks the ``lore`` LLM judge only where P(grade) is uncertain.

    python -m twostage_search.benchmarks.studies.graded_cascade \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --llm-budget 300 --out benchmarks/results/graded-cascade.json

On CrowdFlower's committed query-level splits: ``graded`` (the bundled model, fitted on CrowdFlower and Home
Depot train queries) judges every dev and test pair (cross-encoder logits cached in ``--cache``, as in
:mod:`.graded_model`). For each target share of pairs sent to the LLM (``--shares``), the uncertainty
threshold (``--uncertainty``: entropy of P(grade), or 1 − its top-2 margin) is the dev pairs' quantile
that sends that share; share 0 sends nothing. The :class:`~twostage_search.rerankers.cascade.CascadeReranker`
runs with each threshold on dev, then on test (smallest share first); a share whose new LLM calls would
exceed what is left of ``--llm-budget`` is skipped. The threshold kept is the one with the best quadratic κ
on dev (ties: the smaller share); test reports every share run, with a bootstrap CI over test queries for
the quadratic-κ difference cascade − graded.

LLM judgements are kept in ``--cache``/``lore-judgements.jsonl``, keyed by the judge's cache key (the
backend and model, the prompt, the query and the item's text), so a rerun calls the LLM only for new pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from itertools import groupby
from pathlib import Path
from typing import Any, cast

from twostage_search.benchmarks.graded import GradedPair, GradedSet, agreement, candidates
from twostage_search.benchmarks.graded_data import fill, load_split_set, open_caches
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.graded_model import bootstrap_kappa_diff
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.cascade import UNCERTAINTY, CascadeReranker
from twostage_search.rerankers.graded import GradedReranker
from twostage_search.rerankers.llm.lore import Judgement, JudgementCache, LoreReranker

log = logging.getLogger(__name__)

SHARES = (0.01, 0.02, 0.05, 0.10)
Firsts = dict[str, tuple[Query, list[Candidate], list[Judgement]]]


class JudgementFile:
    """LLM judgements on disk (JSONL, appended to): the judge's cache key, the judgement, ms it took."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ms: dict[tuple[str, ...], float] = {}
        self.rows: dict[tuple[str, ...], Judgement] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed run: judged again
                    continue
                key = tuple(row["key"])
                j = row["judgement"]
                self.rows[key] = Judgement(**(j | {"probs": tuple(j["probs"]) if j["probs"] else None}))
                self.ms[key] = float(row["ms"])

    def load_into(self, judge: LoreReranker) -> None:
        for key, j in self.rows.items():
            judge.cache.put(key, j)

    def add(self, key: tuple[str, ...], judgement: Judgement, ms: float) -> None:
        self.rows[key], self.ms[key] = judgement, ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:  # append-only: a killed run keeps what it judged
            fh.write(json.dumps({"key": list(key), "judgement": asdict(judgement), "ms": ms}) + "\n")


def first_judgements(data: GradedSet, pairs: Sequence[GradedPair], graded: GradedReranker, caches: Any) -> Firsts:
    """``graded``'s judgements of every pair, query by query (each query's pairs are its candidates)."""
    out: Firsts = {}
    for qid, group in groupby(pairs, key=lambda p: p.query_id):
        todo = list(group)
        cands = candidates(data, todo)
        logits = {name: [c.values[(qid, p.doc_id)] for p in todo] for name, c in caches.items()}
        out[qid] = (data.queries[qid], cands, graded.judgements(data.queries[qid], cands, logits))
    return out


# The largest uncertainty of P over four grades: a threshold there sends nothing.
MAX_UNCERTAINTY = {"entropy": math.log(4), "margin": 1.0}


def threshold_for(uncertainty: Sequence[float], share: float, most: float) -> float:
    """The threshold above which ``share`` of the pairs lie (ties may send fewer); share 0: ``most``, the
    largest possible uncertainty (nothing is sent, on any split)."""
    if share == 0:
        return most
    ranked = sorted(uncertainty, reverse=True)
    n = round(share * len(ranked))
    return ranked[min(n, len(ranked) - 1)]


def run_split(cascade: CascadeReranker, firsts: Firsts, store: JudgementFile, budget: int) -> dict[str, Any] | None:
    """Run the cascade over one split's queries; None if it needs more new LLM calls than ``budget``."""
    judge = cascade.second
    assert isinstance(judge, LoreReranker) and cascade.judge_above is not None
    pick = cascade.uncertainty
    need = 0
    for query, cands, first in firsts.values():
        for c, j in zip(cands, first, strict=True):
            if (j.probs is None or pick(j.probs) > cascade.judge_above) and judge.cache_key(query, c) not in store.rows:
                need += 1
    if need > budget:
        log.info("threshold %.4f needs %d new LLM calls, %d left: skipped", cascade.judge_above, need, budget)
        return None
    labels: list[int] = []
    sent: list[bool] = []
    queries_sent = judged = 0
    for query, cands, first in firsts.values():
        result = cascade.escalate(query, cands, first)
        up = set(result.escalated)
        queries_sent += bool(up)
        if result.judged:
            ms = result.costs[-1].wall_ms / result.judged
            for i in result.escalated:
                j = result.judgements[i]
                key = cast(tuple[str, ...], judge.cache_key(query, cands[i]))
                if j.source != "graded" and not j.cached and key not in store.rows:
                    store.add(key, j, ms)
            judged += result.judged
        labels += [j.label or 0 for j in result.judgements]
        sent += [i in up for i in range(len(cands))]
    return {"labels": labels, "sent": sent, "queries_sent": queries_sent, "judged": judged}


def measure_graded(graded: GradedReranker, firsts: Firsts, n_queries: int = 3) -> float:
    """ms per pair of ``graded`` judging a few test queries' pairs afresh (cross-encoder pass included)."""
    pairs, ms = 0, 0.0
    for query, cands, _ in list(firsts.values())[:n_queries]:
        _, cost = graded.judge_with_cost(query, cands)
        pairs, ms = pairs + len(cands), ms + cost.wall_ms
    return ms / max(pairs, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load_split_set(args.crowdflower)
    if len(data.grades) != 4:
        raise InputError("the cascade benchmark needs a four-grade set (L1–L4 map onto it in order)")
    graded = GradedReranker(threads=args.threads)
    caches = open_caches(args.cache, "crowdflower", graded.logit_names)
    pairs = {s: data.pairs(s) for s in ("dev", "test")}
    for s in ("dev", "test"):
        fill(data, pairs[s], caches, graded)
    firsts = {s: first_judgements(data, pairs[s], graded, caches) for s in ("dev", "test")}
    pick = UNCERTAINTY[args.uncertainty]
    unc = {
        s: [pick(j.probs) if j.probs else float("inf") for _, _, js in firsts[s].values() for j in js] for s in firsts
    }
    judge = LoreReranker(
        "llama-cpp", cache=JudgementCache(1_000_000), backend_options={"threads": args.threads} | args.backend_option
    )
    store = JudgementFile(args.cache / "lore-judgements.jsonl")
    store.load_into(judge)
    human = {s: [p.grade for p in pairs[s]] for s in pairs}
    budget = args.llm_budget
    load_before = os.getloadavg()[0]
    runs: dict[float, dict[str, dict[str, Any]]] = {}
    for share in (0.0, *sorted(args.shares)):
        t = threshold_for(unc["dev"], share, MAX_UNCERTAINTY[args.uncertainty])
        cascade = CascadeReranker(graded, judge, judge_above=t, uncertainty=args.uncertainty)
        out: dict[str, dict[str, Any]] = {}
        for s in ("dev", "test"):
            started = time.perf_counter()
            r = run_split(cascade, firsts[s], store, budget)
            if r is None:
                break
            budget -= r["judged"]
            r["wall_s"] = time.perf_counter() - started
            r["threshold"] = t
            out[s] = r
            log.info("share %.2f %s: %d pairs sent, %d new LLM calls", share, s, sum(r["sent"]), r["judged"])
        if len(out) < 2:
            break
        runs[share] = out
    scale, cut = data.grades, data.cut
    dev_kappa = {
        share: agreement(human["dev"], r["dev"]["labels"], scale, cut)["kappa_quadratic"] for share, r in runs.items()
    }
    chosen = max(runs, key=lambda sh: (round(dev_kappa[sh], 6), -sh))
    graded_test = runs[0.0]["test"]["labels"]
    n_test, n_queries = len(pairs["test"]), len(firsts["test"])
    llm_ms = [store.ms[k] for k in store.ms]
    llm_ms_pair = sum(llm_ms) / len(llm_ms) if llm_ms else None
    graded_ms = measure_graded(graded, firsts["test"])
    fresh_tokens = [(j.tokens_in, j.tokens_out) for j in store.rows.values() if j.tokens_in]
    tokens_in = sum(a for a, _ in fresh_tokens) / max(len(fresh_tokens), 1)
    tokens_out = sum(b for _, b in fresh_tokens) / max(len(fresh_tokens), 1)
    rows = []
    for share, r in runs.items():
        test = r["test"]
        m = agreement(human["test"], test["labels"], scale, cut)
        m.pop("confusion")
        sent = sum(test["sent"])
        diff = bootstrap_kappa_diff(pairs["test"], test["labels"], graded_test, scale, cut) if sent else None
        rows.append(
            {
                "dev_share_target": share,
                "threshold": r["dev"]["threshold"],
                "dev_share_sent": sum(r["dev"]["sent"]) / len(pairs["dev"]),
                "dev_kappa_quadratic": dev_kappa[share],
                "chosen_on_dev": share == chosen,
                "test_pairs_sent": sent,
                "test_share_sent": sent / n_test,
                "test_queries_reaching_llm": test["queries_sent"] / n_queries,
                "kappa_quadratic_diff_vs_graded": diff,
                "ms_per_pair": graded_ms + (sent / n_test) * (llm_ms_pair or 0.0),
                "llm_tokens_per_pair": (sent / n_test) * (tokens_in + tokens_out),
            }
            | m
        )
    widest = max(runs)
    sent_idx = [i for i, f in enumerate(runs[widest]["test"]["sent"]) if f]
    alone: dict[str, Any] = {"share": widest, "pairs": len(sent_idx)}
    if sent_idx:
        h = [human["test"][i] for i in sent_idx]
        llm = [runs[widest]["test"]["labels"][i] for i in sent_idx]
        for name, labels in (("lore", llm), ("graded", [graded_test[i] for i in sent_idx])):
            m = agreement(h, labels, scale, cut)
            m.pop("confusion")
            alone[name] = m | {"label_counts": {g: labels.count(g) for g in scale}}
        alone["human_counts"] = {g: h.count(g) for g in scale}
    return {
        "dataset": str(args.crowdflower),
        "uncertainty": args.uncertainty,
        "llm": {"backend": "llama-cpp", "options": args.backend_option, "prompt_id": judge.prompt_id},
        "llm_budget": args.llm_budget,
        "llm_calls_this_run": args.llm_budget - budget,
        "llm_judgements_stored": len(store.rows),
        "shares_run": list(runs),
        "chosen_share": chosen,
        "test_pairs": n_test,
        "test_queries": n_queries,
        "rows": rows,
        "llm_alone_on_sent_test_pairs": alone,
        "cost": {
            "graded_ms_per_pair": graded_ms,
            "llm_ms_per_pair": llm_ms_pair,
            "llm_tokens_in_per_call": tokens_in,
            "llm_tokens_out_per_call": tokens_out,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "threads": args.threads,
        },
    }


def table(report: Mapping[str, Any]) -> str:
    lines = [
        "| dev target share | threshold | dev κq | test share sent | test queries reaching LLM | Acc@4 | Acc@2 "
        "| Macro-F1@4 | κ linear | κ quadratic | κq − graded (95% CI) | ms/pair | LLM tokens/pair |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        d = r["kappa_quadratic_diff_vs_graded"]
        ci = f"{d['diff']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})" if d else "-"
        mark = " (chosen)" if r["chosen_on_dev"] else ""
        lines.append(
            f"| {r['dev_share_target']:.2f}{mark} | {r['threshold']:.4f} | {r['dev_kappa_quadratic']:.3f} "
            f"| {r['test_share_sent']:.3f} | {r['test_queries_reaching_llm']:.2f} | {r['acc@4']:.3f} "
            f"| {r['acc@2']:.3f} | {r['macro_f1@4']:.3f} | {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} "
            f"| {ci} | {r['ms_per_pair']:.0f} | {r['llm_tokens_per_pair']:.1f} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m twostage_search.benchmarks.studies.graded_cascade", description=__doc__.split("\n")[0]
    )
    p.add_argument("--crowdflower", type=Path, required=True, help="the CrowdFlower search-relevance BEIR folder")
    p.add_argument("--cache", type=Path, default=Path("var/graded"), help="folder of cached logits and LLM judgements")
    p.add_argument("--shares", type=float, nargs="+", default=list(SHARES), help="target shares of dev pairs to send")
    p.add_argument("--uncertainty", choices=sorted(UNCERTAINTY), default="entropy")
    p.add_argument("--llm-budget", type=int, default=300, help="most new LLM calls in this run (cached ones are free)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend-option", type=_option, action="append", default=[], help="k=v for the llama-cpp backend")
    p.add_argument("--out", type=Path, help="write the report (JSON) here; the table goes to stdout")
    return p


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected k=v")
    return key, json.loads(value) if value[:1] in "0123456789[{tfn-" else value


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = parser().parse_args(argv)
    args.backend_option = dict(args.backend_option)
    if any(not 0 < s < 1 for s in args.shares) or args.llm_budget < 0:
        print("error: shares must be in (0, 1) and --llm-budget ≥ 0", file=sys.stderr)
        return 2
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
