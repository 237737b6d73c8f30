"""The query sets of the depth table: which queries are dev and test, and their cascade nDCG@10 per depth.

    python -m twostage_search.benchmarks.studies.depth_sets --set scifact --out var/depth/ids-scifact.txt

TREC DL: dev = DL19, test = DL20 (every judged query). SciFact: dev = the queries of ``qrels/train.tsv``
(the stop model is fitted and λ chosen there, cross-fitted), test = ``qrels/test.tsv``. CrowdFlower: the
committed seeded split (``benchmarks/data/splits``): dev = its train and dev parts, test = its test part;
grades 1–4 count as gains 0–3.

Scoring every query's top 100 with a cross-encoder is the expensive part, so SciFact and CrowdFlower are
scored as a seeded sample: each side is shuffled (``--seed``) and the two orders are interleaved (test,
dev, test, …) into one id file that :mod:`benchmarks.score_cache` scores in order. Whatever prefix has
been scored when it stops is a seeded random sample of both sides; :func:`load_set` uses the queries
whose every candidate is scored.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from twostage_search.benchmarks.evaluation import evaluate, read_run
from twostage_search.benchmarks.graded_data import SPLITS_DIR, read_splits
from twostage_search.engine.beir import find_file, read_qrels, read_queries
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.pipeline import merge_cascade
from twostage_search.engine.types import Candidate, Query, RankedList

log = logging.getLogger(__name__)

KS = (10, 20, 50, 100)
SETS = ("scifact", "crowdflower-search-relevance")


@dataclass
class RunSet:
    """One first-stage run on one set of queries: the queries, rankings, cached scores and nDCG@10 per depth."""

    name: str
    queries: dict[str, Query]
    first: dict[str, RankedList]
    scores: Mapping[str, Mapping[str, float]]
    ndcg: dict[int, dict[str, float]]

    @property
    def ids(self) -> list[str]:
        return list(self.queries)

    def ndcg_at(self, q: str, depth: int) -> float:
        return self.ndcg[depth][q]


def subset(rs: RunSet, ids: Sequence[str]) -> RunSet:
    return RunSet(rs.name, {q: rs.queries[q] for q in ids}, rs.first, rs.scores, rs.ndcg)


def runset(
    name: str,
    qrels: Mapping[str, Mapping[str, int]],
    queries: Mapping[str, Query],
    ranking: Mapping[str, Sequence[tuple[str, float]]],
    ids: Sequence[str],
    scores: Mapping[str, Mapping[str, float]],
    *,
    rel: int = 1,
    drop_query_id: bool = False,
    partial: bool = False,
) -> RunSet:
    """The queries ``ids`` that are judged and ranked (in that order); with ``partial``, only those whose
    every top-100 candidate is scored (otherwise a missing score is an error)."""
    ids = [q for q in ids if q in qrels and q in ranking and q in queries]
    missing = [q for q in ids if any(d not in scores.get(q, {}) for d, _ in ranking[q][:100])]
    if missing and not partial:
        raise InputError(f"score cache lacks pairs of {len(missing)} {name} queries (run score_cache)")
    if missing:
        log.info("%s: %d of %d queries not fully scored, left out", name, len(missing), len(ids))
        ids = [q for q in ids if q not in missing]
    if not ids:
        raise InputError(f"{name}: no query is fully scored")
    first = {
        q: RankedList.from_candidates(
            q, [Candidate(d, s) for d, s in ranking[q][:100] if not (drop_query_id and d == q)]
        )
        for q in ids
    }
    depths = sorted({0, *KS, *range(10, 101, 10), *(len(first[q]) for q in ids)})
    ndcg: dict[int, dict[str, float]] = {}
    for k in depths:
        rankings = {}
        for q in ids:
            cands = first[q].candidates()
            head = RankedList.from_scores(q, cands[:k], [scores[q][c.doc_id] for c in cands[:k]])
            rankings[q] = [(h.doc_id, h.score) for h in merge_cascade(q, head, cands[k:])]
        values = evaluate(qrels, ids, rankings, ["nDCG@10"], rel=rel, drop_query_id=False)["nDCG@10"]
        ndcg[k] = dict(zip(ids, values, strict=True))
    return RunSet(name, {q: queries[q] for q in ids}, first, scores, ndcg)


def load_dl(
    dataset: Path, run: str, scores: Mapping[str, Mapping[str, float]], rel: int, partial: bool = False
) -> RunSet:
    """A TREC DL year's judged queries of ``DATASET/runs/RUN.top100.trec``."""
    qrels = read_qrels(dataset / "qrels" / "test.tsv")
    ranking = read_run(dataset / "runs" / f"{run}.top100.trec")
    queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    ids = sorted(q for q in qrels if q in ranking)
    return runset(f"{dataset.name}/{run}", qrels, queries, ranking, ids, scores, rel=rel, partial=partial)


def split_ids(dataset: Path) -> tuple[list[str], list[str], int]:
    """(dev ids, test ids, grade offset) of a set, each sorted."""
    if dataset.name == "scifact":
        dev = sorted(read_qrels(dataset / "qrels" / "train.tsv"))
        test = sorted(read_qrels(dataset / "qrels" / "test.tsv"))
        return dev, test, 0
    path = SPLITS_DIR / f"{dataset.name}.tsv"
    if not path.is_file():
        raise InputError(f"no split file {path} (sets: {', '.join(SETS)})")
    splits = read_splits(path)
    return sorted((*splits.get("train", ()), *splits.get("dev", ()))), sorted(splits["test"]), 1


def sample_order(dev: Sequence[str], test: Sequence[str], seed: int) -> list[str]:
    """Both sides shuffled (one seeded generator, test first) and interleaved test, dev, test, …"""
    rng = random.Random(seed)
    test, dev = list(test), list(dev)
    rng.shuffle(test)
    rng.shuffle(dev)
    pairs = itertools.zip_longest(test, dev)
    return [q for pair in pairs for q in pair if q is not None]


def load_set(
    dataset: Path, run_files: Sequence[Path], scores: Mapping[str, Mapping[str, float]], seed: int
) -> tuple[RunSet, RunSet]:
    """(dev, test) of SciFact or CrowdFlower: the fully scored queries of the seeded sample order."""
    dev, test, offset = split_ids(dataset)
    order = sample_order(dev, test, seed)
    ranking: dict[str, list[tuple[str, float]]] = {}
    for path in run_files:
        ranking.update(read_run(path))
    qrels: dict[str, dict[str, int]] = {}
    for split in ("train", "test"):
        path = dataset / "qrels" / f"{split}.tsv"
        if path.is_file():
            for q, docs in read_qrels(path).items():
                qrels.setdefault(q, {}).update({d: g - offset for d, g in docs.items()})
    queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    dev_set, test_set = set(dev), set(test)
    out = []
    for side, members in (("dev", dev_set), ("test", test_set)):
        ids = [q for q in order if q in members]
        name = f"{dataset.name}-{side}/bm25"
        out.append(runset(name, qrels, queries, ranking, ids, scores, drop_query_id=True, partial=True))
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, required=True, help="the dataset folder (scifact, crowdflower-…)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, required=True, help="the id file to write")
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        dev, test, _ = split_ids(args.set)
    except TwoStageError as exc:
        print(f"depth_sets: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    order = sample_order(dev, test, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("".join(f"{q}\n" for q in order), encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {len(order)} queries ({len(dev)} dev, {len(test)} test), seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
