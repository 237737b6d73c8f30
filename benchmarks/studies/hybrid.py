"""Dense and hybrid first stages against SPLADE and BM25: fusion settings chosen on dev, reported on test.

    python -m twostage_search.benchmarks.studies.hybrid --dataset ../shared/datasets/scifact --indexes var/scifact
    python -m twostage_search.benchmarks.studies.hybrid --dataset ../shared/datasets/crowdflower-search-relevance \\
        --indexes var/crowdflower --grade-offset 1 --rel 2

Component indexes are read from ``INDEXES-lucene-impact``, ``INDEXES-lucene-bm25`` and
``INDEXES-dense-flat`` (built with ``twostage index --backend ...`` when missing, default settings).

Splits: ``dev`` is the queries of ``qrels/train.tsv`` when the dataset has one (SciFact: all 809 train
queries), else a seeded 50/50 split of the test queries (``benchmarks.graded.split_queries``, seed 13;
CrowdFlower: 130 dev / 131 test). ``--grade-offset`` is subtracted from every grade (CrowdFlower's 1–4
become gains 0–3) and ``--rel`` is the lowest shifted grade a binary measure (R@100) counts as relevant
(CrowdFlower: 2, i.e. original grade ≥ 3). Unjudged documents count as not relevant.

Each query runs through every component to depth 100, interleaved (the order rotates per query), so the
latencies are measured side by side in one run. Fusions (:mod:`engine.fusion`: RRF with k ∈ RRF_KS,
min-max and z-score score fusion; weights from WEIGHTS per component, at least two components) are
searched on dev by nDCG@10; the best of each family, plain RRF (equal weights, k=60) and the single
components are then scored on test, each against SPLADE with a paired randomisation test (Holm across
the whole table) and a bootstrap 95% CI of the difference. The chosen hybrid (best on dev) is also run
as a real :class:`~twostage_search.indexes.hybrid.HybridRetriever`, sequential and parallel, in the same
interleaved test loop, for its latency (and its output is checked against the offline fusion).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean, percentile
from twostage_search.benchmarks.graded import split_queries
from twostage_search.engine.beir import find_file, read_qrels, read_queries
from twostage_search.engine.costed import costed_retriever
from twostage_search.engine.fusion import MINMAX, RRF, ZSCORE, fuse
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

COMPONENTS = {"splade": "lucene-impact", "bm25": "lucene-bm25", "dense": "dense-flat"}
BASELINE = "splade"
WEIGHTS = (0.0, 0.5, 1.0, 2.0)
RRF_KS = (10.0, 30.0, 60.0, 100.0)
DEPTH = 100
MEASURES = ("nDCG@10", "R@100")
NO_SPLADE = "bm25+dense"  # the best fusion without SPLADE (any method): a cheaper candidate

Run = dict[str, list[tuple[str, float]]]  # query id → ranking


@dataclass(frozen=True)
class FusionConfig:
    method: str
    weights: tuple[float, ...]  # in COMPONENTS order
    k: float = 60.0

    @property
    def label(self) -> str:
        ws = "/".join(f"{w:g}" for w in self.weights)
        return f"{self.method}(k={self.k:g}, w={ws})" if self.method == RRF else f"{self.method}(w={ws})"

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "weights": dict(zip(COMPONENTS, self.weights, strict=True))}


@dataclass
class Split:
    name: str
    queries: list[Query]
    qrels: dict[str, dict[str, int]]


def load_splits(dataset: Path, grade_offset: int) -> tuple[Split, Split, str]:
    queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}

    def shifted(path: Path) -> dict[str, dict[str, int]]:
        return {q: {d: g - grade_offset for d, g in docs.items()} for q, docs in read_qrels(path).items()}

    test_qrels = shifted(dataset / "qrels" / "test.tsv")
    train = dataset / "qrels" / "train.tsv"
    if train.is_file():
        dev_qrels = shifted(train)
        how = "dev = every query of qrels/train.tsv; test = qrels/test.tsv"
        dev_ids, test_ids = sorted(dev_qrels), sorted(test_qrels)
    else:
        parts = split_queries([q for q in test_qrels if q in queries], {"dev": 0.5, "test": 0.5})
        dev_ids, test_ids = list(parts["dev"]), list(parts["test"])
        dev_qrels = test_qrels
        how = "dev/test = seeded 50/50 split of the qrels/test.tsv queries (benchmarks.graded.split_queries, seed 13)"
    dev = Split("dev", [queries[q] for q in dev_ids if q in queries], dev_qrels)
    test = Split("test", [queries[q] for q in test_ids if q in queries], test_qrels)
    return dev, test, how


def ensure_index(dataset: Path, prefix: str, backend: str) -> Any:
    from twostage_search import indexes

    path = Path(f"{prefix}-{backend}")
    if not (path / "meta.json").is_file():
        corpus = find_file(dataset, "corpus")
        cmd = [sys.executable, "-m", "twostage_search.cli", "index", str(corpus), "--index", str(path)]
        subprocess.run([*cmd, "--backend", backend, "--no-progress"], check=True)
    return indexes.load(path)


def run_interleaved(
    systems: Mapping[str, Any], queries: Sequence[Query], warmup: int
) -> tuple[dict[str, Run], dict[str, list[float]]]:
    """Every query through every system (order rotating per query): rankings and wall ms per query."""
    calls = {name: costed_retriever(r) for name, r in systems.items()}
    names = list(calls)
    for q in queries[:warmup]:
        for name in names:
            calls[name](q, DEPTH)
    runs: dict[str, Run] = {n: {} for n in names}
    ms: dict[str, list[float]] = {n: [] for n in names}
    for i, q in enumerate(queries):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            ranking, _ = calls[name](q, DEPTH)
            ms[name].append((time.perf_counter() - started) * 1000)
            runs[name][q.query_id] = [(h.doc_id, h.score) for h in ranking]
    return runs, ms


def fused_run(runs: Mapping[str, Run], config: FusionConfig, query_ids: Sequence[str], depth: int = DEPTH) -> Run:
    names = list(COMPONENTS)
    out: Run = {}
    for q in query_ids:
        active = [(runs[n][q], w) for n, w in zip(names, config.weights, strict=True) if w > 0]
        out[q] = fuse([r for r, _ in active], [w for _, w in active], method=config.method, k=config.k)[:depth]
    return out


def grid() -> list[FusionConfig]:
    seen: set[tuple[float, ...]] = set()
    weights = []
    for w in itertools.product(WEIGHTS, repeat=len(COMPONENTS)):
        if sum(x > 0 for x in w) < 2:
            continue
        key = tuple(round(x / max(w), 6) for x in w)  # fusion ranks are invariant to scaling all weights
        if key not in seen:
            seen.add(key)
            weights.append(w)
    configs = [FusionConfig(RRF, w, k) for k in RRF_KS for w in weights]
    return configs + [FusionConfig(m, w) for m in (MINMAX, ZSCORE) for w in weights]


def ndcg10(split: Split, run: Run) -> float:
    ids = [q.query_id for q in split.queries]
    top = {q: run[q][:10] for q in ids}
    return mean(evaluate(split.qrels, ids, top, ("nDCG@10",))["nDCG@10"])


def choose(split: Split, runs: Mapping[str, Run]) -> tuple[dict[str, FusionConfig], list[dict[str, Any]]]:
    """Best config per family on ``split`` (nDCG@10; ties → the earlier config), and every config's score."""
    ids = [q.query_id for q in split.queries]
    scored = []
    for config in grid():
        scored.append((ndcg10(split, fused_run(runs, config, ids, depth=10)), config))
    best: dict[str, FusionConfig] = {}
    best_score: dict[str, float] = {}
    for score, config in scored:
        families = [config.method] + ([NO_SPLADE] if config.weights[0] == 0 else [])
        for family in families:
            if score > best_score.get(family, -1.0):
                best[family], best_score[family] = config, score
    table = [{"config": c.label, "nDCG@10": round(s, 4)} for s, c in sorted(scored, key=lambda sc: -sc[0])]
    return best, table


def scores(split: Split, runs: Mapping[str, Run], rel: int) -> dict[str, dict[str, list[float]]]:
    ids = [q.query_id for q in split.queries]
    return {name: evaluate(split.qrels, ids, run, MEASURES, rel=rel) for name, run in runs.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.indexes.hybrid import Fusion, HybridRetriever

    dev, test, how = load_splits(args.dataset, args.grade_offset)
    if args.max_queries:
        dev.queries, test.queries = dev.queries[: args.max_queries], test.queries[: args.max_queries]
    opened = {name: ensure_index(args.dataset, str(args.indexes), backend) for name, backend in COMPONENTS.items()}
    threads = {"threads": args.threads} if args.threads else {}
    retrievers: dict[str, Any] = {
        "splade": opened["splade"].retriever(),
        "bm25": opened["bm25"].retriever(),
        "dense": opened["dense"].retriever(opened["dense"].encoder(**threads)),
    }
    started = time.perf_counter()
    dev_runs, _ = run_interleaved(retrievers, dev.queries, args.warmup)
    best, dev_table = choose(dev, dev_runs)
    plain = FusionConfig(RRF, (1.0, 1.0, 1.0), 60.0)
    fusions = {"rrf k=60 equal": plain, **{f"{m} (dev-tuned)": c for m, c in best.items()}}
    dev_ids = [q.query_id for q in dev.queries]
    dev_all = {**dev_runs, **{n: fused_run(dev_runs, c, dev_ids) for n, c in fusions.items()}}
    dev_scores = scores(dev, dev_all, args.rel)
    chosen_name = max(fusions, key=lambda n: (mean(dev_scores[n]["nDCG@10"]), n == "rrf k=60 equal"))
    chosen = fusions[chosen_name]

    def hybrid(config: FusionConfig, parallel: bool) -> HybridRetriever:
        weights = dict(zip(COMPONENTS, config.weights, strict=True))
        parts = {n: r for n, r in retrievers.items() if weights[n] > 0}
        fusion = Fusion(method=config.method, k=config.k, depth=DEPTH)
        return HybridRetriever(parts, {n: weights[n] for n in parts}, fusion, parallel=parallel)

    systems = {
        **retrievers,
        "hybrid (sequential)": hybrid(chosen, False),
        "hybrid (parallel)": hybrid(chosen, True),
        f"{NO_SPLADE} (dev-tuned, sequential)": hybrid(best[NO_SPLADE], False),
    }
    test_runs, test_ms = run_interleaved(systems, test.queries, args.warmup)
    test_ids = [q.query_id for q in test.queries]
    offline = fused_run(test_runs, chosen, test_ids)
    mismatch = sum(offline[q] != test_runs["hybrid (sequential)"][q] for q in test_ids)
    test_all = {
        **{n: test_runs[n] for n in COMPONENTS},
        **{n: fused_run(test_runs, c, test_ids) for n, c in fusions.items()},
    }
    test_scores = scores(test, test_all, args.rel)
    rows = [n for n in test_all if n != BASELINE]
    pairs = [(test_scores[n][m], test_scores[BASELINE][m]) for n in rows for m in MEASURES]
    comparisons = iter(compare(pairs, seed=0))
    table = {
        n: {
            "dev": {m: round(mean(dev_scores[n][m]), 4) for m in MEASURES},
            "test": {m: round(mean(test_scores[n][m]), 4) for m in MEASURES},
            "vs_splade_test": {m: next(comparisons).as_dict() for m in MEASURES} if n != BASELINE else None,
            "config": fusions[n].as_dict() if n in fusions else None,
        }
        for n in [BASELINE, *rows]
    }
    dev_vs = compare([(dev_scores[chosen_name][m], dev_scores[BASELINE][m]) for m in MEASURES], seed=0)
    cheap = f"{NO_SPLADE} (dev-tuned)"
    dev_cheap = compare([(dev_scores[cheap][m], dev_scores[chosen_name][m]) for m in MEASURES], seed=0)
    return {
        "dataset": str(args.dataset),
        "splits": how,
        "queries": {"dev": len(dev.queries), "test": len(test.queries)},
        "docs": len(opened["splade"]),
        "grade_offset": args.grade_offset,
        "rel": args.rel,
        "depth": DEPTH,
        "table": table,
        "chosen_on_dev": {
            "name": chosen_name,
            **chosen.as_dict(),
            "dev_vs_splade": dict(zip(MEASURES, (c.as_dict() for c in dev_vs), strict=True)),
        },
        "dev_bm25_dense_vs_chosen": dict(zip(MEASURES, (c.as_dict() for c in dev_cheap), strict=True)),
        "dev_grid_top10": dev_table[:10],
        "dev_grid": dev_table,
        "grid_size": len(grid()),
        "latency_ms_test": {
            n: {"p50": round(percentile(v, 50), 2), "p95": round(percentile(v, 95), 2)} for n, v in test_ms.items()
        },
        "hybrid_offline_mismatches": mismatch,
        "dense_threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['dataset']}: {report['docs']} docs, {report['queries']['dev']} dev / {report['queries']['test']} "
        f"test queries ({report['splits']}); grades − {report['grade_offset']}, R@100 rel ≥ {report['rel']}",
        "",
        "| first stage | dev nDCG@10 | dev R@100 | test nDCG@10 | Δ vs SPLADE [95% CI] (p Holm) | test R@100 | "
        "Δ vs SPLADE [95% CI] (p Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["table"].items():
        cells = [name, f"{row['dev']['nDCG@10']:.4f}", f"{row['dev']['R@100']:.4f}"]
        for m in MEASURES:
            cells.append(f"{row['test'][m]:.4f}")
            vs = row["vs_splade_test"]
            if vs is None:
                cells.append("(baseline)")
            else:
                c = vs[m]
                cells.append(f"{c['delta']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] ({c['p_holm']:.3g})")
        if row["config"]:
            cells[0] += (
                f" — {FusionConfig(row['config']['method'], tuple(row['config']['weights'].values()), row['config']['k']).label}"  # noqa: E501
            )
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| first stage (test queries, interleaved) | p50 ms | p95 ms |", "|---|---|---|"]
    for name, lat in report["latency_ms_test"].items():
        lines.append(f"| {name} | {lat['p50']:.1f} | {lat['p95']:.1f} |")
    c = report["chosen_on_dev"]
    lines.append("")
    lines.append(
        f"chosen on dev: {c['name']} {c['weights']} k={c['k']:g}; dev vs SPLADE: {json.dumps(c['dev_vs_splade'])}"
    )
    lines.append(f"dev, best bm25+dense vs chosen: {json.dumps(report['dev_bm25_dense_vs_chosen'])}")
    lines.append(f"hybrid retriever vs offline fusion mismatches: {report['hybrid_offline_mismatches']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--indexes", type=Path, required=True, help="prefix of the component index directories")
    parser.add_argument("--grade-offset", type=int, default=0, help="subtracted from every qrels grade")
    parser.add_argument("--rel", type=int, default=1, help="lowest (shifted) grade R@100 counts as relevant")
    parser.add_argument("--max-queries", type=int, default=None, help="first N queries of each split")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up queries per split")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads of the dense encoder")
    parser.add_argument("--out", type=Path, default=Path("runs/hybrid"))
    args = parser.parse_args(argv)
    setup_logging(0)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.dataset.name
    (args.out / f"hybrid-{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    (args.out / f"hybrid-{name}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
