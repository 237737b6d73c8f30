"""``bm25-csc`` against ``lucene-bm25`` on one corpus: the same top ``k`` and Lucene's scores for every query.

    python -m twostage_search.benchmarks.studies.bm25_equality --dataset ../shared/datasets/scifact \\
        --split test --work var/bm25-equality --out benchmarks/results/bm25_equality
    python -m twostage_search.benchmarks.studies.bm25_equality \\
        --dataset ../shared/datasets/homedepot-search-relevance --split test --max-queries 1000 \\
        --splits-file benchmarks/data/splits/homedepot-search-relevance.tsv \\
        --work var/bm25-equality --out benchmarks/results/bm25_equality

Both indexes are built from the corpus with default settings under ``--work/<dataset>/`` (kept and reused;
``--rebuild`` builds them again). Compared, for every query, the top ``--depth``:

- ``bm25-csc`` against Lucene's own float32 scores (:class:`~indexes.lucene_bm25.LuceneBM25Scores`: the
  query and sort of ``lucene-bm25``, unrounded): the same (doc_id, score) list, scores equal to the bit;
- ``bm25-csc`` against the ``lucene-bm25`` retriever (Anserini's scores, rounded to 4 decimals and lowered
  by 1e-6 per position within a tie): the same doc ids in the same order, and the largest score differences;
  with ``scores="anserini"``, the same (doc_id, score) list;
- the field statistics BM25 reads (documents with a term, tokens, every term's document frequency);
- with ``--hybrid-dense PATH`` (a ``dense-flat`` index of the same corpus), the default hybrid's fused top
  ``--depth`` (min-max, BM25 1 : dense 2) over ``bm25-csc`` against the same over ``lucene-bm25``, with
  nDCG@10 and R@100: over a ``bm25-csc`` index built with ``scores="anserini"`` (from the ``lucene-bm25``
  index's documents, as ``hybrid`` builds its component) the fusion is the same; over Lucene's float32 scores
  min-max normalises slightly different numbers, so a near tie can swap (reported, not required).

Queries: ``--split test`` is ``qrels/test.tsv``; ``--splits-file F --split NAME`` the queries the split file
assigns to NAME that ``qrels/test.tsv`` judges; ``--max-queries`` keeps a seeded sample (the seed and
selection of ``first_stage_ratio``). Nothing is timed. Writes ``--out/bm25_equality-<dataset>-<split>.json``
and exits 1 if any query or statistic differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.datasets import judged_queries
from twostage_search.benchmarks.evaluation import evaluate, machine, mean
from twostage_search.engine.beir import count_docs, find_file, read_corpus
from twostage_search.engine.errors import InputError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

SEED = 13  # first_stage_ratio's: the same seeded sample of queries
MEASURES = ("nDCG@10", "R@100")
Qrels = dict[str, dict[str, int]]


def select_queries(
    dataset: Path, split: str, splits_file: Path | None, max_queries: int
) -> tuple[list[Query], dict[str, dict[str, int]]]:
    """The judged queries of ``split`` (from ``splits_file`` when given), a seeded sample of ``max_queries``,
    with their qrels."""
    if splits_file is None and split != "test":
        raise InputError(f"without --splits-file the split is test, got {split!r}")
    return judged_queries(dataset, split, splits_file=splits_file, max_queries=max_queries, seed=SEED)


def open_or_build(backend: Any, corpus: Path, path: Path, rebuild: bool) -> Any:
    from twostage_search.engine.errors import IndexLoadError

    if not rebuild:
        try:
            return backend.open(path)
        except IndexLoadError:
            pass
    log.info("building %s at %s", backend.backend, path)
    return backend.build(read_corpus(corpus), path, total=count_docs(corpus), progress=False)


def open_or_convert(lucene: Any, path: Path, rebuild: bool) -> Any:
    """A ``bm25-csc`` index reporting ``lucene-bm25``'s scores, built from ``lucene``'s documents."""
    from twostage_search.engine.errors import IndexLoadError
    from twostage_search.indexes.bm25_csc import Bm25CscIndex

    if not rebuild:
        try:
            return Bm25CscIndex.open(path)
        except IndexLoadError:
            pass
    return Bm25CscIndex.from_lucene_bm25(lucene.path, path, scores="anserini", progress=False)


def compare(lucene_index: Any, csc_index: Any, queries: list[Query], depth: int) -> dict[str, Any]:
    from twostage_search.indexes.lucene_bm25 import LuceneBM25Scores

    anserini, exact, csc = lucene_index.retriever(), LuceneBM25Scores(lucene_index), csc_index.retriever()
    csc_anserini = csc_index.retriever(scores="anserini")
    stats = exact.statistics()
    same_stats = {
        "doc_count": stats["doc_count"] == csc_index.meta["indexed_count"],
        "sum_total_term_freq": stats["sum_total_term_freq"] == csc_index.meta["total_tokens"],
        "doc_freqs": stats["doc_freqs"] == csc_index.doc_freqs(),
    }
    exact_diffs, id_diffs, hits, empty, ties, same_as_anserini = [], [], 0, 0, 0, 0
    max_diff = max_rounded_diff = 0.0
    for q in queries:
        got = csc.search_text(q.text, depth)
        hits += len(got)
        empty += not got
        deeper = csc.search_text(q.text, depth + 1)  # a tie across the cut-off tests tie-breaking
        ties += len(deeper) > depth and deeper[depth][1] == deeper[depth - 1][1]
        if got != exact.search(q.text, depth):
            exact_diffs.append({"query_id": q.query_id, "csc": got[:3], "lucene": exact.search(q.text, depth)[:3]})
        want = anserini.search_text(q.text, depth)
        same_as_anserini += csc_anserini.search_text(q.text, depth) == want
        if [d for d, _ in got] != [d for d, _ in want]:
            id_diffs.append(q.query_id)
            continue
        for (_, a), (_, b) in zip(got, want, strict=True):
            max_diff = max(max_diff, abs(a - b))
            max_rounded_diff = max(max_rounded_diff, abs(round(a, 4) - b))
    anserini.close()
    exact.close()
    return {
        "statistics": {**same_stats, "doc_count_value": stats["doc_count"], "terms": len(stats["doc_freqs"])},
        "identical_to_lucene_float32": len(queries) - len(exact_diffs),
        "same_ids_as_lucene_bm25": len(queries) - len(id_diffs),
        "identical_to_lucene_bm25_with_anserini_scores": same_as_anserini,
        "max_abs_score_diff_vs_lucene_bm25": max_diff,
        "max_abs_diff_rounded_4_vs_lucene_bm25": max_rounded_diff,
        "mean_hits": round(hits / max(len(queries), 1), 2),
        "queries_without_hits": empty,
        "queries_with_a_tie_across_the_cut": ties,
        "differing": {"float32": exact_diffs[:20], "ids": id_diffs[:20]},
    }


def compare_hybrids(
    lexical: dict[str, Any], dense: Path, work: Path, queries: list[Query], qrels: Qrels, args: argparse.Namespace
) -> dict[str, Any]:
    """The default hybrid's fused top ``depth`` over each ``lexical`` index (name → index, ``lucene-bm25``
    first) with the same dense side; each against the one over ``lucene-bm25``, with its mean nDCG@10 and
    R@100 (grades shifted by ``--grade-offset``, R@100 from ``--rel``)."""
    from twostage_search.indexes.hybrid import DEFAULT_COMPONENTS, DEFAULT_WEIGHTS, Component, HybridIndex

    retrievers = {}
    for name, index in lexical.items():
        paths = {"bm25": index.path, "dense": dense}
        parts = [Component(c, str(paths[c]), DEFAULT_WEIGHTS[c]) for c in DEFAULT_COMPONENTS]
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        retrievers[name] = HybridIndex.compose(work / f"hybrid-over-{slug}", parts).retriever()
    rankings: dict[str, dict[str, Any]] = {name: {} for name in lexical}
    for q in queries:
        for name, retriever in retrievers.items():
            rankings[name][q.query_id] = retriever.retrieve(q, args.depth)
    for retriever in retrievers.values():
        retriever.close()
    shifted = {q: {d: g - args.grade_offset for d, g in docs.items()} for q, docs in qrels.items()}
    ids = [q.query_id for q in queries]
    reference = next(iter(lexical))
    out: dict[str, Any] = {}
    for name, runs in rankings.items():
        quality = evaluate(shifted, ids, {q: r.doc_ids for q, r in runs.items()}, MEASURES, rel=args.rel)
        row: dict[str, Any] = {m: round(mean(quality[m]), 5) for m in MEASURES}
        if name != reference:
            pairs = [(rankings[reference][q], runs[q]) for q in ids]
            same = [(a, b) for a, b in pairs if a.doc_ids == b.doc_ids]
            row["same_fused_ids"] = len(same)
            row["identical_fused_ranking"] = sum(a == b for a, b in same)
            row["mean_overlap"] = round(
                mean([len(set(a.doc_ids) & set(b.doc_ids)) / max(len(a), 1) for a, b in pairs]), 5
            )
            row["max_abs_fused_score_diff"] = max(
                (abs(x.score - y.score) for a, b in same for x, y in zip(a, b, strict=True)), default=0.0
            )
        out[f"hybrid over {name}"] = row
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.indexes.bm25_csc import Bm25CscIndex
    from twostage_search.indexes.lucene_bm25 import LuceneBM25Index

    corpus = find_file(args.dataset, "corpus")
    queries, qrels = select_queries(args.dataset, args.split, args.splits_file, args.max_queries)
    work = args.work / args.dataset.name
    lucene = open_or_build(LuceneBM25Index, corpus, work / "lucene-bm25", args.rebuild)
    csc = open_or_build(Bm25CscIndex, corpus, work / "bm25-csc", args.rebuild)
    anserini_path = work / "bm25-csc-anserini-scores"  # for the hybrid: lucene-bm25's scores, as hybrid builds it
    log.info("%d queries, top %d", len(queries), args.depth)
    hybrid = (
        {}
        if args.hybrid_dense is None
        else compare_hybrids(
            {
                "lucene-bm25": lucene,
                "bm25-csc": csc,
                "bm25-csc (anserini scores)": open_or_convert(lucene, anserini_path, args.rebuild),
            },
            args.hybrid_dense,
            work,
            queries,
            qrels,
            args,
        )
    )
    return {
        "dataset": args.dataset.name,
        "split": args.split,
        "splits_file": str(args.splits_file) if args.splits_file else None,
        "queries": len(queries),
        "documents": len(csc),
        "depth": args.depth,
        "bm25": csc.meta["bm25"],
        "machine": machine(),
        **compare(lucene, csc, queries, args.depth),
        **hybrid,
    }


def passed(report: dict[str, Any]) -> bool:
    n = report["queries"]
    return (
        all(report["statistics"][k] for k in ("doc_count", "sum_total_term_freq", "doc_freqs"))
        and report["identical_to_lucene_float32"] == n
        and report["same_ids_as_lucene_bm25"] == n
        and report["identical_to_lucene_bm25_with_anserini_scores"] == n
        and report.get("hybrid over bm25-csc (anserini scores)", {}).get("identical_fused_ranking", n) == n
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--splits-file", type=Path, default=None, help="a query-level split file (query-id, split)")
    p.add_argument("--max-queries", type=int, default=0, help="a seeded sample of this many queries (0: all)")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--work", type=Path, default=Path("var/bm25-equality"), help="where the two indexes are built")
    p.add_argument("--rebuild", action="store_true", help="build the indexes again even if they are there")
    p.add_argument("--hybrid-dense", type=Path, default=None, help="a dense-flat index: also compare the hybrids")
    p.add_argument("--grade-offset", type=int, default=0, help="subtracted from every grade (hybrid quality)")
    p.add_argument("--rel", type=int, default=1, help="lowest shifted grade R@100 counts (hybrid quality)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bm25_equality"))
    args = p.parse_args(argv)
    setup_logging()
    try:
        report = run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_status(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"bm25_equality-{report['dataset']}-{args.split}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("machine", "differing")}
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
