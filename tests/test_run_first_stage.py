"""A TREC run + BEIR corpus as the first stage: the published DL19/DL20 runs reproduce their nDCG@10."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import TINY
from twostage_search.benchmarks.configs import parse_system
from twostage_search.benchmarks.evaluation import evaluate, mean
from twostage_search.engine.beir import read_qrels, read_queries
from twostage_search.engine.errors import InputError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.types import Query
from twostage_search.indexes.run_file import RunRetriever
from twostage_search.rerankers.identity import IdentityReranker

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
DL = {"trec-dl-2019-passage": 43, "trec-dl-2020-passage": 54}
# Anserini's regression pages (dl19-passage, dl20-passage, *.splade-pp-ed): trec_eval nDCG@10, and the
# datasets' README for R@100 with grade >= 2 counted relevant (the TREC DL convention).
PUBLISHED = {
    ("trec-dl-2019-passage", "bm25"): (0.5058, 0.4910),
    ("trec-dl-2020-passage", "bm25"): (0.4796, None),
    ("trec-dl-2019-passage", "splade-pp-ed"): (0.7308, 0.6390),
    ("trec-dl-2020-passage", "splade-pp-ed"): (0.7197, None),
}


@pytest.mark.parametrize(("dataset", "run"), sorted(PUBLISHED))
def test_published_dl_runs_reproduce_through_the_pipeline(dataset, run):
    path = SHARED / dataset
    qrels = read_qrels(path / "qrels" / "test.tsv")
    queries = [q for q in read_queries(path / "queries.jsonl") if q.query_id in qrels]
    assert len(queries) == DL[dataset]
    engine = TwoStage(RunRetriever(path / "runs" / f"{run}.top100.trec", path / "corpus.jsonl"), IdentityReranker())
    rankings = {q.query_id: [(h.doc_id, h.score) for h in engine.search(q, k=100)] for q in queries}
    assert all(len(r) == 100 for r in rankings.values())
    values = evaluate(qrels, [q.query_id for q in queries], rankings, ["nDCG@10", "R@100"], rel=2)
    ndcg, r100 = PUBLISHED[(dataset, run)]
    assert round(mean(values["nDCG@10"]), 4) == ndcg
    if r100 is not None:
        assert round(mean(values["R@100"]), 4) == r100
        # counting grade 1 ("related") as relevant changes recall: the cut is really applied
        loose = evaluate(qrels, [q.query_id for q in queries], rankings, ["R@100"], rel=1)
        assert round(mean(loose["R@100"]), 4) != r100


def _tiny_run(tmp_path: Path, lines: list[str]) -> Path:
    run = tmp_path / "tiny.run"
    run.write_text("".join(f"{line}\n" for line in lines))
    return run


def test_run_retriever_orders_ties_by_doc_id_and_carries_text(tmp_path):
    run = _tiny_run(tmp_path, ["q1 Q0 d02 1 2.0 x", "q1 Q0 d03 2 3.0 x", "q1 Q0 d01 3 2.0 x", "q2 Q0 d04 1 1.0 x"])
    retriever = RunRetriever(run, TINY / "corpus.jsonl")
    ranking = retriever.retrieve(Query("q1", "capital of france"), 10)
    assert ranking.doc_ids == ["d03", "d01", "d02"]  # score descending, the 2.0 tie by doc_id ascending
    assert ranking.items[1].title == "Paris" and ranking.items[1].text.startswith("Paris is the capital")
    assert retriever.retrieve(Query("q1", "x"), 2).doc_ids == ["d03", "d01"]
    assert len(retriever.retrieve(Query("q9", "not in the run"), 10)) == 0
    _, costs = retriever.retrieve_with_cost(Query("q2", "x"), 10)
    assert costs[0].stage == "retrieve" and costs[0].docs == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["q1 Q0 d01 1 2.0"], "expected 6 columns"),
        (["q1 Q0 d01 1 high x"], "score 'high' is not a number"),
        (["q1 Q0 d01 1 2.0 x", "q1 Q0 d01 2 1.0 x"], "document 'd01' repeats for query 'q1'"),
        (["q1 Q0 nope 1 2.0 x"], "1 document\\(s\\) not in"),
    ],
)
def test_run_retriever_rejects_bad_runs(tmp_path, lines, message):
    with pytest.raises(InputError, match=message):
        RunRetriever(_tiny_run(tmp_path, lines), TINY / "corpus.jsonl")


def test_system_config_takes_a_run_alone():
    system = parse_system({"name": "R", "first_stage": {"run": "x.run"}})
    assert system.first_stage.run == Path("x.run") and system.first_stage.encoder_name is None
    assert system.describe_first_stage() == "run x.run"
    with pytest.raises(InputError, match="takes no backend, index"):
        parse_system({"name": "R", "first_stage": {"run": "x.run", "backend": "lucene-bm25", "index": "i"}})


def test_evaluate_rules_by_hand():
    qrels = {"a": {"d1": 3, "d2": 1, "a": 2}}
    # "a" (the query's own id) is dropped; d2 is related (1), d1 highly relevant (3)
    values = evaluate(qrels, ["a", "b"], {"a": [("a", 9.0), ("d2", 2.0), ("d1", 1.0)]}, ["nDCG@10", "RR@10"], rel=2)
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # the judged "a" stays in the ideal ranking
    assert values["nDCG@10"] == pytest.approx([dcg / idcg, 0.0])  # b: no results → 0
    assert values["RR@10"] == pytest.approx([1 / 2, 0.0])  # first doc with grade ≥ 2 is d1 at rank 2
    kept = evaluate(qrels, ["a"], {"a": ["a", "d2", "d1"]}, ["RR@10"], rel=2, drop_query_id=False)
    assert kept["RR@10"] == [1.0]


def test_trec_dl_cell_reranks_a_run_with_a_real_cross_encoder(tmp_path):
    """Two DL19 queries, BM25 top 5 reranked by the bundled cross-encoder through ``twostage bench``."""
    from tests.helpers import need

    need("sentence_transformers", "rerank")
    from sentence_transformers import CrossEncoder

    from twostage_search.benchmarks.studies.trec_dl import load_cell, run_cell, table
    from twostage_search.engine.beir import read_corpus, read_trec_run
    from twostage_search.engine.models import resolve_model

    path = SHARED / "trec-dl-2019-passage"
    cell = run_cell(path, "bm25", "cross-encoder", 2, 5, tmp_path, threads=2)
    assert cell.queries == 2 and cell.depth == 5
    qrels = read_qrels(path / "qrels" / "test.tsv")
    first_ids = [q.query_id for q in read_queries(path / "queries.jsonl") if q.query_id in qrels][:2]
    texts = {q.query_id: q.text for q in read_queries(path / "queries.jsonl")}
    run = read_trec_run(path / "runs" / "bm25.top100.trec")
    wanted = {d for q in first_ids for d, _ in run[q][:5]}
    docs = {d.doc_id: d.text for d in read_corpus(path / "corpus.jsonl") if d.doc_id in wanted}
    model = CrossEncoder(resolve_model("bundled:ce-minilm-l6-scifact"), max_length=256)
    expected_first, expected_reranked = [], []
    for q in first_ids:
        head = [d for d, _ in run[q][:5]]
        scores = model.predict([(texts[q], docs[d]) for d in head])
        reordered = [d for _, d in sorted(zip((-float(s) for s in scores), head, strict=True))]
        tail = [d for d, _ in run[q][5:]]
        for ranking, out in ((head + tail, expected_first), (reordered + tail, expected_reranked)):
            gains = [qrels[q].get(d, 0) for d in ranking[:10]]
            ideal = sorted(qrels[q].values(), reverse=True)[:10]
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
            out.append(dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal)))
    assert cell.first == pytest.approx(expected_first, abs=1e-6)
    assert cell.reranked == pytest.approx(expected_reranked, abs=1e-4)
    back = load_cell(tmp_path / "trec-dl-2019-passage" / "bm25" / "cross-encoder" / "report.json")
    assert (back.first, back.reranked, back.queries, back.depth) == (cell.first, cell.reranked, 2, 5)
    text, records = table([cell])
    assert "zero-shot" in text and "(subsample)" in text and records[0]["published_first"] == 0.5058


def test_the_scifact_cross_encoder_is_labelled_in_domain_on_scifact_only():
    from twostage_search.benchmarks.runner import reranker_in_domain

    scifact = {"model": "bundled:ce-minilm-l6-scifact"}
    scifact_ce = parse_system({"name": "CE", "reranker": {"name": "cross-encoder", "params": scifact}})
    assert reranker_in_domain(scifact_ce, "scifact")
    assert not reranker_in_domain(scifact_ce, "trec-dl-2019-passage")
    default_ce = parse_system({"name": "CE", "reranker": {"name": "cross-encoder"}})  # MS MARCO by default
    assert not reranker_in_domain(default_ce, "scifact")
    other = parse_system({"name": "CE2", "reranker": {"name": "cross-encoder", "params": {"model": "some/dir"}}})
    assert not reranker_in_domain(other, "scifact")
    assert not reranker_in_domain(parse_system({"name": "I", "reranker": {"name": "identity"}}), "scifact")
