"""Score every (query, document) of a dataset's first-stage runs once with a pointwise reranker; cache it.

    python -m twostage_search.benchmarks.score_cache --dataset ../shared/datasets/trec-dl-2019-passage \\
        --runs bm25 splade-pp-ed --out var/depth/scores-trec-dl-2019-passage.json

``--runs`` takes run names (``DATASET/runs/NAME.top100.trec``) or paths to TREC run files;
``--query-ids FILE`` (one id per line) scores only those queries, in that order, so that a run stopped
early holds a prefix of a seeded sample (:mod:`benchmarks.depth_sets` writes such files).

The pairs of all runs are deduplicated per query (runs overlap). Each query's documents are scored in
calls of 10, 20 and 50 documents in turn, each call timed, so the file also holds the observations a
calibrated ``a + b·k`` cost model is fitted on (:meth:`ScoreCache.cost_model`) besides the plain
measured milliseconds per document. The file is rewritten atomically every few queries, so a long run
can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import machine, read_run
from twostage_search.engine.beir import find_file, read_corpus, read_queries
from twostage_search.engine.costmodel import CostModel, LinearCost, Observation
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.protocols import PointwiseScorer
from twostage_search.engine.types import Candidate

log = logging.getLogger(__name__)

CALL_SIZES = (10, 20, 50)
RUNTIME_PARAMS = frozenset({"threads", "device"})  # change the time a score takes, not the score


@dataclass
class ScoreCache:
    """Reranker scores by query and document, with the timed calls that produced them."""

    reranker: str
    params: dict[str, Any]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    calls: list[tuple[int, float, int]] = field(default_factory=list)  # (docs, ms, tokens) per call
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ms_per_doc(self) -> float:
        docs = sum(c[0] for c in self.calls)
        if not docs:
            raise InputError("score cache holds no timed calls")
        return sum(c[1] for c in self.calls) / docs

    def cost_model(self) -> CostModel:
        """``ms = a + b·k`` fitted on the timed calls (the per-call overhead is ``a``)."""
        fitted = LinearCost.fit(Observation(k, ms, t) for k, ms, t in self.calls)
        return CostModel({"rerank": fitted}, {"source": "score cache calls", "calls": len(self.calls)})

    def proportional_cost(self) -> CostModel:
        """``ms = ms_per_doc · k``: the measured mean cost of a reranked document."""
        return CostModel({"rerank": LinearCost((0.0, self.ms_per_doc, 0.0))}, {"source": "measured ms per doc"})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "reranker": self.reranker,
            "params": self.params,
            "ms_per_doc": round(self.ms_per_doc, 4) if self.calls else None,
            "meta": self.meta,
            "calls": [[k, round(ms, 3), t] for k, ms, t in self.calls],
            "scores": {q: {d: round(s, 6) for d, s in sorted(docs.items())} for q, docs in sorted(self.scores.items())},
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def merge(self, other: ScoreCache) -> None:
        """Add ``other``'s scores and timed calls (e.g. a second process's share of the same query list)."""
        if (other.reranker, _scoring(other.params)) != (self.reranker, _scoring(self.params)):
            raise InputError(f"cannot merge scores of {other.reranker} {other.params} into {self.reranker}")
        for q, docs in other.scores.items():
            self.scores.setdefault(q, {}).update(docs)
        self.calls += other.calls

    @classmethod
    def load(cls, path: Path) -> ScoreCache:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"no score cache {path} (run python -m twostage_search.benchmarks.score_cache)") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"corrupt score cache {path}: {exc}") from None
        calls = [(int(k), float(ms), int(t)) for k, ms, t in data.get("calls", [])]
        return cls(data["reranker"], dict(data.get("params", {})), data["scores"], calls, dict(data.get("meta", {})))


def _scoring(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in RUNTIME_PARAMS}


def run_path(dataset: Path, run: str) -> Path:
    """A run name (``DATASET/runs/NAME.top100.trec``) or a path to a TREC run file."""
    path = Path(run) if run.endswith((".trec", ".run")) else dataset / "runs" / f"{run}.top100.trec"
    if not path.is_file():
        raise InputError(f"no run {path}")
    return path


def score_runs(
    dataset: Path,
    runs: Sequence[str],
    out: Path,
    reranker: str,
    params: dict[str, Any],
    depth: int = 100,
    query_ids: Sequence[str] | None = None,
) -> ScoreCache:
    """Score the top ``depth`` of each run (deduplicated per query) into ``out``, resuming what is there;
    with ``query_ids``, only those queries, in that order."""
    from twostage_search.engine.registry import rerankers

    cache = ScoreCache.load(out) if out.is_file() else ScoreCache(reranker, params)
    if (cache.reranker, _scoring(cache.params)) != (reranker, _scoring(params)):
        raise InputError(f"{out} holds {cache.reranker} {cache.params}, not {reranker} {params}")
    cache.params = params
    wanted: dict[str, list[str]] = {}
    for name in runs:
        for q, docs in read_run(run_path(dataset, name)).items():
            seen = wanted.setdefault(q, [])
            seen += [d for d, _ in docs[:depth] if d not in seen]
    queries = {q.query_id: q for q in read_queries(find_file(dataset, "queries"))}
    order = list(query_ids) if query_ids is not None else sorted(wanted)
    wanted = {q: wanted[q] for q in order if q in wanted and q in queries}
    todo = {q: [d for d in docs if d not in cache.scores.get(q, {})] for q, docs in wanted.items()}
    todo = {q: docs for q, docs in todo.items() if docs}
    if not todo:
        return cache
    need = {d for docs in todo.values() for d in docs}
    texts = {d.doc_id: d for d in read_corpus(find_file(dataset, "corpus")) if d.doc_id in need}
    model = rerankers.get(reranker)(**params)
    if not isinstance(model, PointwiseScorer):
        raise InputError(f"{reranker} does not score pointwise (score_candidates)")
    cache.meta = {"machine": machine(), "dataset": str(dataset), "runs": list(runs), "depth": depth}
    for i, (q, ids) in enumerate(todo.items(), 1):
        cands = [Candidate(d, 0.0, texts[d].text, texts[d].title) for d in ids]
        start, call = 0, 0
        while start < len(cands):
            size = CALL_SIZES[call % len(CALL_SIZES)]
            part = cands[start : start + size]
            scores, cost = model.score_candidates(queries[q], part)
            cache.scores.setdefault(q, {}).update({c.doc_id: s for c, s in zip(part, scores, strict=True)})
            cache.calls.append((len(part), cost.wall_ms, cost.tokens_in))
            start, call = start + size, call + 1
        if i % 5 == 0 or i == len(todo):
            cache.save(out)
            log.info("scored %d/%d queries (%.1f ms/doc)", i, len(todo), cache.ms_per_doc)
    return cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument(
        "--runs", nargs="+", default=["bm25", "splade-pp-ed"], help="NAME (DATASET/runs/NAME.top100.trec) or a run file"
    )
    parser.add_argument("--query-ids", type=Path, help="score only these queries (one id per line), in this order")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--reranker", default="onnx-cross-encoder", help="a registered pointwise reranker")
    parser.add_argument("--reranker-params", default='{"threads": 2}', help="JSON")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--merge", type=Path, nargs="+", help="instead of scoring: add these caches into --out")
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        if args.merge:
            merged = ScoreCache.load(args.out)
            for path in args.merge:
                merged.merge(ScoreCache.load(path))
            merged.save(args.out)
            print(f"{args.out}: {sum(len(d) for d in merged.scores.values())} pairs over {len(merged.scores)} queries")
            return 0
        ids = None
        if args.query_ids is not None:
            if not args.query_ids.is_file():
                raise InputError(f"no query id file {args.query_ids}")
            ids = [line.strip() for line in args.query_ids.read_text(encoding="utf-8").splitlines() if line.strip()]
        cache = score_runs(
            args.dataset, args.runs, args.out, args.reranker, json.loads(args.reranker_params), args.depth, ids
        )
    except TwoStageError as exc:
        print(f"score_cache: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    pairs = sum(len(d) for d in cache.scores.values())
    print(f"{args.out}: {pairs} pairs over {len(cache.scores)} queries, {cache.ms_per_doc:.2f} ms per document")
    return 0


if __name__ == "__main__":
    sys.exit(main())
