"""Test-split quality of the default (BM25 + dense, min-max 1:2) vs SPLADE, quality only (no timing)."""

from pathlib import Path

from twostage_search import indexes
from twostage_search.benchmarks.evaluation import compare, evaluate, mean
from twostage_search.benchmarks.hybrid import MEASURES, FusionConfig, fused_run, load_splits, run_interleaved

for ds, prefix, off, rel in (
    ("scifact", "var/scifact", 0, 1),
    ("crowdflower-search-relevance", "var/crowdflower", 1, 2),
):
    dev, test, how = load_splits(Path("../shared/datasets") / ds, off)
    r = {
        n: indexes.load(f"{prefix}-{b}").retriever()
        for n, b in (("splade", "lucene-impact"), ("bm25", "lucene-bm25"), ("dense", "dense-flat"))
    }
    runs, _ = run_interleaved(r, test.queries, 0)
    ids = [q.query_id for q in test.queries]
    default = fused_run(runs, FusionConfig("minmax", (0.0, 1.0, 2.0)), ids)
    s = evaluate(test.qrels, ids, default, MEASURES, rel=rel)
    b = evaluate(test.qrels, ids, runs["splade"], MEASURES, rel=rel)
    d = evaluate(test.qrels, ids, runs["dense"], MEASURES, rel=rel)
    cs = compare([(s[m], b[m]) for m in MEASURES] + [(s[m], d[m]) for m in MEASURES], seed=0)
    print(ds, {m: round(mean(s[m]), 4) for m in MEASURES})
    for (label, m), c in zip(
        [("vs splade", m) for m in MEASURES] + [("vs dense", m) for m in MEASURES], cs, strict=True
    ):
        print(" ", label, m, c.as_dict())
