"""``impact-csc`` against ``lucene-impact`` on one encoding of a corpus: the same top ``k`` for every query.

    python -m twostage_search.benchmarks.studies.impact_equality --dataset benchmarks/data/scifact --split test \\
        --out benchmarks/results/impact_equality

The corpus is encoded once with the SPLADE encoder (default settings, or ``--max-length``); both indexes are
built from those document vectors (the same ``--scale``), so any difference comes from the indexes, not the
encoder. For every query of the split and every query-pruning level in ``--prune`` (``query_top_n``; 0 =
all terms) the query is encoded once onto the index's terms (both indexes hold the same terms, checked),
quantised, and both indexes' top ``--depth`` (doc_id, integer score) are compared; then each backend's
whole retriever (``retrieve``: its own query encoding, ids and float scores) is compared too. Nothing is
timed. Writes ``--out/impact_equality-<dataset>-<split>.json`` and exits 1 if any query differs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import machine
from twostage_search.engine.beir import count_docs, find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.encoders import SparseEncoder, create_encoder
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import SparseVector

log = logging.getLogger(__name__)


class Replay:
    """A document side that hands out vectors computed once, in corpus order: a build reads the corpus in
    order, so each build gets exactly the same vectors (checked against the texts)."""

    def __init__(self, texts: Sequence[str], vectors: Sequence[SparseVector], config: dict[str, Any]) -> None:
        self._texts, self._vectors, self._config = texts, vectors, config
        self._next = 0

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        start, self._next = self._next, self._next + len(texts)
        if list(self._texts[start : self._next]) != list(texts):
            raise RuntimeError("documents arrive in another order than they were encoded")
        return list(self._vectors[start : self._next])

    def config(self) -> dict[str, Any]:
        return self._config


def encode_once(encoder: SparseEncoder, texts: Sequence[str], chunk: int = 256) -> list[SparseVector]:
    from tqdm.auto import tqdm

    vectors: list[SparseVector] = []
    with tqdm(total=len(texts), desc="encode", unit="doc", dynamic_ncols=True) as bar:
        for start in range(0, len(texts), chunk):
            vectors.extend(encoder.encode_docs(texts[start : start + chunk]))
            bar.update(min(chunk, len(texts) - start))
    return vectors


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from twostage_search.indexes.impact_csc import ImpactCscIndex
    from twostage_search.indexes.lucene_impact import LuceneImpactIndex

    corpus = find_file(args.dataset, "corpus")
    qrels = read_qrels(args.dataset / "qrels" / f"{args.split}.tsv")
    queries = [q for q in read_queries(find_file(args.dataset, "queries")) if q.query_id in qrels]
    docs = list(read_corpus(corpus))
    encoder = create_encoder("splade", max_length=args.max_length)
    texts = [d.full_text for d in docs]
    vectors = encode_once(encoder, texts)

    def replaying() -> SparseEncoder:
        return SparseEncoder(encoder.name, encoder.query, Replay(texts, vectors, encoder.doc.config()), encoder.params)

    common = {"scale": args.scale, "total": count_docs(corpus), "progress": False}
    lucene = LuceneImpactIndex.build(docs, work / "lucene-impact", encoder=replaying(), **common)
    csc = ImpactCscIndex.build(docs, work / "impact-csc", encoder=replaying(), **common)
    report: dict[str, Any] = {
        "dataset": args.dataset.name,
        "split": args.split,
        "queries": len(queries),
        "documents": len(docs),
        "depth": args.depth,
        "scale": args.scale,
        "encoder": encoder.config(),
        "index_terms": len(csc.terms),
        "postings": csc.meta["postings"],
        "machine": machine(),
        "levels": {},
    }
    for n in (int(x) for x in args.prune.split(",")):
        top_n = n or None
        left = lucene.retriever(encoder, query_top_n=top_n)
        right = csc.retriever(encoder, query_top_n=top_n)
        # each encodes queries onto the terms its own index holds (a SPLADE query side's ``vocabulary``)
        same_terms = list(getattr(left.encoder.query, "vocabulary", [None])) == list(
            getattr(right.encoder.query, "vocabulary", [])
        )
        impact_diffs, retrieve_diffs, hits, ties = [], [], 0, 0
        for q, vector in zip(queries, right.encoder.encode_queries([q.text for q in queries]), strict=True):
            impacts = vector.top(top_n).quantize(args.scale)
            want, got = left.search_impacts(impacts, args.depth), right.search_impacts(impacts, args.depth)
            hits += len(got)
            deeper = right.search_impacts(impacts, args.depth + 1)  # a tie across the cut-off tests tie-breaking
            ties += len(deeper) > args.depth and deeper[args.depth][1] == deeper[args.depth - 1][1]
            if want != got:
                impact_diffs.append({"query_id": q.query_id, "lucene": want[:5], "csc": got[:5]})
            a, b = left.retrieve(q, args.depth, texts=False), right.retrieve(q, args.depth, texts=False)
            if a.doc_ids != b.doc_ids or [h.score for h in a] != [h.score for h in b]:
                retrieve_diffs.append(q.query_id)
        left.close()
        report["levels"]["all" if n == 0 else f"top{n}"] = {
            "same_index_terms": same_terms,
            "identical_search_impacts": len(queries) - len(impact_diffs),
            "identical_retrieve": len(queries) - len(retrieve_diffs),
            "mean_hits": round(hits / len(queries), 2),
            "queries_tied_at_cutoff": ties,
            "differences": impact_diffs[:10],
            "retrieve_differences": retrieve_diffs[:10],
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("benchmarks/data/scifact"))
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv names the queries")
    parser.add_argument("--prune", default="24,0", help="query_top_n levels, 0 = all terms (default: 24,0)")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--scale", type=float, default=100.0)
    parser.add_argument("--max-length", type=int, default=256, help="document tokens")
    parser.add_argument("--work", type=Path, default=None, help="where to build the indexes (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    setup_logging(0)
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="impact-equality-") as tmp:
            report = run(args, Path(tmp))
    else:
        report = run(args, args.work)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"impact_equality-{report['dataset']}-{report['split']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    queries, name = report["queries"], f"{report['dataset']}/{report['split']}"
    print(f"{name}: {queries} queries, {report['documents']} documents, depth {report['depth']}")
    ok = True
    for level, row in report["levels"].items():
        print(
            f"{level:>6}: same index terms {row['same_index_terms']}; identical ids and scores "
            f"{row['identical_search_impacts']}/{queries} (search_impacts), "
            f"{row['identical_retrieve']}/{queries} (retrieve); mean hits {row['mean_hits']}; "
            f"tied at the cut-off {row['queries_tied_at_cutoff']}"
        )
        ok &= row["same_index_terms"] and not row["differences"] and not row["retrieve_differences"]
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
