"""The inference-free SPLADE query side (``query_side="lookup"``): fit its token table, choose and measure it.

    python -m twostage_search.benchmarks.studies.splade_query_table fit \
        --datasets ../shared/datasets --out engine/students/splade-tiny-query-lookup
    python -m twostage_search.benchmarks.studies.splade_query_table evaluate --datasets ../shared/datasets \
        --index scifact=var/scifact-csc --index homedepot-search-relevance=var/hd-csc \
        --index crowdflower-search-relevance=var/cf-csc --idf-power 0,0.5,0.75,1 \
        --out benchmarks/results/splade_query_table.json

``fit``: each word piece's mean weight under ``bundled:splade-tiny``'s query encoder (64 tokens, all terms)
over the texts that contain it. The texts carry no relevance labels and no dev or test query: SciFact's
document titles, the train-split queries of CrowdFlower and Home Depot (benchmarks/data/splits) and the TREC
DL 2019/2020 queries.

``evaluate``: for every dev and test query of each set (SciFact: dev = the first 300 train queries, test =
qrels/test.tsv; CrowdFlower, Home Depot: benchmarks/data/splits), the index searched with the SPLADE query
encoder and with the lookup at each ``idf_power``: nDCG@10 and R@100, each lookup's paired difference from
the encoder with a bootstrap 95% CI and a randomisation test (Holm over the split's table). Choose
``idf_power`` on the dev rows; read the test rows for the chosen one only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean
from twostage_search.benchmarks.studies.query_student import read_split, split_ids
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.beir import find_file, read_queries
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

MODEL = "bundled:splade-tiny"
MEASURES = ("nDCG@10", "R@100")
DEPTH = 100
GRADE_OFFSET = {"crowdflower-search-relevance": 1, "homedepot-search-relevance": 1}
REL = {"crowdflower-search-relevance": 2, "homedepot-search-relevance": 1}
SPLIT_SETS = ("crowdflower-search-relevance", "homedepot-search-relevance")
DL_SETS = ("trec-dl-2019-passage", "trec-dl-2020-passage")


def table_texts(datasets: Path) -> Iterator[str]:
    """The fitting texts, in a fixed order: SciFact titles, the two sets' train queries, the DL queries."""
    with (datasets / "scifact" / "corpus.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            title = json.loads(line).get("title") or ""
            if title.strip():
                yield title
    for name in SPLIT_SETS:
        texts = {q.query_id: q.text for q in read_queries(find_file(datasets / name, "queries"))}
        train = {q for q, split in read_split(datasets / name).items() if split == "train"}
        yield from (texts[q] for q in sorted(train) if q in texts)
    for name in DL_SETS:
        yield from (q.text for q in read_queries(find_file(datasets / name, "queries")))


def fit(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.models import resolve_model
    from twostage_search.engine.onnx_splade import OnnxSplade
    from twostage_search.engine.optional import require
    from twostage_search.engine.splade_lookup import TokenTable, mean_token_weights

    encoder = OnnxSplade(MODEL, max_length=64, batch_size=8, threads=args.threads)
    # the model's own tokenizer file, which the lookup splits queries with at search time
    tokenizer = require("tokenizers", "splade").Tokenizer.from_file(str(Path(resolve_model(MODEL)) / "tokenizer.json"))
    texts = list(table_texts(args.datasets))

    def tokenize(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids[:62])  # 64 with [CLS], [SEP]

    means = mean_token_weights(texts, encoder.weights, encoder.vocabulary, tokenize)
    about = {
        "fit": "mean query weight of each word piece over the texts containing it (max_length 64, all terms)",
        "texts": len(texts),
        "sources": "SciFact titles; CrowdFlower and Home Depot train-split queries; TREC DL 2019/2020 queries",
        "study": "benchmarks/studies/splade_query_table.py",
    }
    table = TokenTable.from_weights(MODEL, {t: round(w, 5) for t, w in means.items()}, about)
    path = table.save(args.out)
    log.info("%d word pieces from %d texts → %s", len(means), len(texts), path)
    return {"pieces": len(means), "fallback": table.fallback, **about}


def evaluate_sets(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes
    from twostage_search.engine.types import Query

    report: dict[str, Any] = {"machine": machine(), "table": args.table or "bundled default", "sets": {}}
    for spec in args.index:
        name, path = spec.split("=", 1)
        index = indexes.load(path)
        sides = {"model": index.retriever()}
        for power in args.idf_power:
            sides[f"lookup@{power:g}"] = index.retriever(query_side="lookup", query_table=args.table, idf_power=power)
        texts = {q.query_id: q.text for q in read_queries(find_file(args.datasets / name, "queries"))}
        out: dict[str, Any] = {}
        for split in ("dev", "test"):
            ids, graded = split_ids(args.datasets / name, split)
            ids = [q for q in ids if q in texts]
            offset = GRADE_OFFSET.get(name, 0)
            qrels = {q: {d: g - offset for d, g in docs.items()} for q, docs in graded.items()}
            runs = {
                side: {q: list(r.retrieve(Query(q, texts[q]), DEPTH, texts=False).doc_ids) for q in ids}
                for side, r in sides.items()
            }
            scores = {side: evaluate(qrels, ids, run, MEASURES, rel=REL.get(name, 1)) for side, run in runs.items()}
            rows: dict[str, Any] = {s: {m: round(mean(v), 4) for m, v in sc.items()} for s, sc in scores.items()}
            labels = [(side, m) for side in sides if side != "model" for m in MEASURES]
            pairs = [(scores[side][m], scores["model"][m]) for side, m in labels]
            rows["minus_model"] = {f"{s} {m}": c.as_dict() for (s, m), c in zip(labels, compare(pairs), strict=True)}
            rows["queries"] = len(ids)
            out[split] = rows
            log.info("%s %s: %s", name, split, {k: v for k, v in rows.items() if k != "minus_model"})
        report["sets"][name] = out
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit the token table")
    f.add_argument("--datasets", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True, help="directory for table.json")
    f.add_argument("--threads", type=int, default=2)
    e = sub.add_parser("evaluate", help="lookup vs encoder on dev and test queries")
    e.add_argument("--datasets", type=Path, required=True)
    e.add_argument("--index", action="append", required=True, help="SET=PATH of an impact-csc index (repeat)")
    e.add_argument("--idf-power", type=lambda s: [float(x) for x in s.split(",")], default=[0.75])
    e.add_argument("--table", default=None, help="token table (default: the index model's bundled one)")
    for p in (f, e):
        p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    result = fit(args) if args.command == "fit" else evaluate_sets(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.report:
        atomic_write_text(args.report, text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
