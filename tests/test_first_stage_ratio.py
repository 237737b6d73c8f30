"""The first-stage ratio study on the tiny corpus: variants, --same checks, ratios, quality, bad input."""

import json

import pytest

from tests.helpers import TINY, need

need("scipy", "impact")

from twostage_search.benchmarks.evaluation import evaluate
from twostage_search.benchmarks.studies import first_stage_ratio as study
from twostage_search.engine.errors import InputError


def test_parse_variant():
    assert study.parse_variant("d=var/x,search=exact,ef_search=100,w=0.5") == (
        "d",
        study.Path("var/x"),
        {"search": "exact", "ef_search": 100, "w": 0.5},
    )
    for bad in ("noequals", "=path", "name=", "d=var/x,flag"):
        with pytest.raises(InputError):
            study.parse_variant(bad)


def test_median_ratio_of_paired_times():
    # medians 4 and 2 → 2.0; every resample of identical pairs gives the same ratio
    ratio, low, high = study.median_ratio_ci([4.0, 4.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0])
    assert (ratio, low, high) == (2.0, 2.0, 2.0)
    ratio, low, high = study.median_ratio_ci([1.0, 2.0, 3.0, 10.0, 20.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    assert ratio == 3.0 and low <= ratio <= high


def test_study_on_the_tiny_corpus(built_indexes, tiny_queries, tiny_qrels, tmp_path):
    paths = {name: built_indexes[name].path for name in ("lucene-bm25", "lucene-impact", "impact-csc")}
    argv = ["--dataset", str(TINY), "--out", str(tmp_path), "--warmup", "1", "--depth", "10", "--texts", "3"]
    argv += ["--variant", f"bm25={paths['lucene-bm25']}", "--variant", f"splade={paths['lucene-impact']}"]
    argv += ["--variant", f"csc={paths['impact-csc']}", "--same", "csc=splade", "--same", "bm25=splade"]
    assert study.main(argv) == 0
    report = json.loads((tmp_path / "tiny.json").read_text())
    assert report["queries"] == len(tiny_queries) and report["baseline"] == "bm25"
    assert report["variants"]["bm25"]["p50_vs_baseline"] == [1.0, 1.0, 1.0]
    assert [v["backend"] for v in report["variants"].values()] == ["lucene-bm25", "lucene-impact", "impact-csc"]
    # the query encoding where the retriever reports it: SPLADE encodes queries, BM25 has no encode stage
    assert report["variants"]["bm25"]["encode_p50_ms"] is None
    splade = report["variants"]["splade"]
    assert 0 < splade["encode_p50_ms"] < splade["p50_ms"] + 0.01
    enc, base = splade["encode_p50_ms"], report["variants"]["bm25"]["p50_ms"]  # each rounded to 0.01 ms
    low, high = (enc - 0.005) / (base + 0.005) - 0.0005, (enc + 0.005) / max(base - 0.005, 1e-9) + 0.0005
    assert low <= splade["encode_p50_vs_baseline_p50"] <= high
    # quality recomputed independently from a fresh retriever's rankings
    retriever = built_indexes["lucene-bm25"].retriever()
    rankings = {q.query_id: retriever.retrieve(q, 10).doc_ids for q in tiny_queries}
    ids = [q.query_id for q in tiny_queries]
    want = evaluate(tiny_qrels, ids, rankings, ["nDCG@10"])["nDCG@10"]
    assert report["variants"]["bm25"]["quality"]["nDCG@10"] == pytest.approx(sum(want) / len(want), abs=1e-4)
    csc, bm25 = report["same"]
    assert csc["variant"] == "csc" and csc["identical_top"] == 1.0 and csc["mean_overlap"] == 1.0
    assert csc["nDCG@10"]["delta"] == 0.0
    assert bm25["identical_top"] < 1.0  # the check can fail: BM25 does not give SPLADE's rankings
    assert "| csc vs splade | 1.000 | 1.0000 |" in (tmp_path / "tiny.md").read_text()


def test_bad_input_is_one_line_and_status_2(tmp_path, built_indexes, caplog):
    bm25 = built_indexes["lucene-bm25"].path
    argv = ["--dataset", str(TINY), "--out", str(tmp_path), "--variant", f"bm25={bm25}"]
    assert study.main([*argv, "--baseline", "nope"]) == 2
    assert study.main([*argv, "--same", "bm25=nope"]) == 2
    assert study.main([*argv, "--split", "dev"]) != 0  # the tiny set has no train.tsv
    assert not list(tmp_path.iterdir())


def test_overlap_share_counts_two_empty_rankings_as_agreeing():
    from twostage_search.benchmarks.evaluation import overlap_share

    assert overlap_share([], []) == 1.0 and overlap_share(["a"], []) == 0.0
    assert overlap_share(["a", "b"], ["b", "c", "d", "e"]) == 0.25


def test_judged_queries_from_a_split_file(tmp_path):
    from twostage_search.benchmarks.datasets import judged_queries

    splits = tmp_path / "splits.tsv"
    splits.write_text("q1\tdev\nq2\ttest\nq4\ttest\nq6\ttest\nq9\ttest\n")  # q9 is not judged
    queries, qrels = judged_queries(TINY, "test", splits_file=splits, grade_offset=1)
    assert [q.query_id for q in queries] == ["q2", "q4", "q6"]
    assert qrels == {"q2": {"d03": 0}, "q4": {"d05": 0}, "q6": {"d10": 0}}
    two, _ = judged_queries(TINY, "test", splits_file=splits, max_queries=2, seed=13)
    assert len(two) == 2 and [q.query_id for q in two] == sorted(q.query_id for q in two)
    assert two == judged_queries(TINY, "test", splits_file=splits, max_queries=2, seed=13)[0]
    with pytest.raises(InputError, match="has no split 'train'"):
        judged_queries(TINY, "train", splits_file=splits)
