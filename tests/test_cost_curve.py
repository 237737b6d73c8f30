"""The cost-curve study end to end on the tiny corpus: real encoders on 8 of its 12 documents, synthetic
texts and vectors beyond, every stage built, searched and measured at two sizes (no timing checked)."""

import json

import pytest

from tests.helpers import TINY, need

need("scipy", "impact")
need("onnxruntime", "dense")
need("matplotlib", "bench")
pytestmark = pytest.mark.slow

from twostage_search.benchmarks.studies import cost_curve, cost_curve_data, cost_curve_probe


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    common = ["--dataset", str(TINY), "--cache", str(tmp / "cache")]
    assert cost_curve.main(["encode", "--limit", "8", *common]) == 0
    args = [
        "run",
        "--sizes",
        "10,30",
        "--queries",
        "3",
        "--warmup",
        "1",
        "--memory-queries",
        "2",
        "--m",
        "4",
        "--ef",
        "8",
    ]
    assert cost_curve.main([*args, *common, "--out", str(tmp / "out")]) == 0
    return tmp


def test_every_stage_and_size_is_reported(report):
    result = json.loads((report / "out" / "cost_curve.json").read_text())
    assert result["sizes"] == [10, 30]
    assert set(result["stages"]) == set(cost_curve.STAGES)
    for stage, by_size in result["stages"].items():
        assert set(by_size) == {"10", "30"}
        for row in by_size.values():
            assert row["index_bytes"] > 0 and row["peak_rss_mb"] > 0 and row["p50_ms"] > 0
        assert result["growth_exponent"][stage]["p50"] is not None
    assert [result["stages"]["bm25"][n]["p50_vs_bm25"] for n in ("10", "30")] == [1.0, 1.0]
    # 12 real titles, 8 encoded: the rest of each size is synthetic
    assert result["synthetic"] == {"10": {"texts": 0, "vectors": 2}, "30": {"texts": 18, "vectors": 22}}
    assert result["real_encoded"] == 8
    assert (report / "out" / "cost_curve.png").stat().st_size > 0
    assert "| hybrid | 30 |" in (report / "out" / "cost_curve.md").read_text()
    lookup, csc = result["stages"]["splade-csc-lookup"], result["stages"]["splade-csc"]
    assert [lookup[n]["index_bytes"] for n in ("10", "30")] == [csc[n]["index_bytes"] for n in ("10", "30")]


def test_indexes_hold_the_documents_of_each_size(report):
    from twostage_search import indexes

    for size in (10, 30):
        for stage in cost_curve.STAGES:
            assert len(indexes.load(report / "cache" / str(size) / cost_curve_probe.index_dir(stage))) == size
    real = cost_curve_data.titles(TINY)
    bm25 = indexes.load(report / "cache" / "30" / "bm25")
    hits = bm25.retriever().retrieve(cost_curve_data.query_sample(TINY, 3)[0], 30)
    assert all(h.doc_id.startswith("syn-") or h.doc_id in {d.doc_id for d in real} for h in hits)


def test_bm25_csc_answers_as_bm25_and_the_hybrids_are_composed_over_it(report):
    from twostage_search import indexes

    root = report / "cache" / "30"
    bm25, csc = (indexes.load(root / name).retriever() for name in ("bm25", "bm25-csc"))
    for query in cost_curve_data.query_sample(TINY, 3):
        expected = [(h.doc_id, h.score) for h in bm25.retrieve(query, 30)]
        assert [(h.doc_id, h.score) for h in csc.retrieve(query, 30)] == expected
    for stage, dense in (("hybrid", "dense-flat"), ("hybrid-hnsw", "dense-hnsw")):
        build = json.loads((root / f"{stage}.build.json").read_text())
        assert build["composed_of"] == ["bm25-csc", dense]
        paths = {c["name"]: c["path"] for c in indexes.load(root / stage).meta["components"]}
        assert paths == {"bm25": str(root / "bm25-csc"), "dense": str(root / dense)}


def test_exponent_is_the_log_log_slope():
    assert cost_curve.exponent([10, 100, 1000], [1.0, 10.0, 100.0]) == 1.0
    assert cost_curve.exponent([10, 1000], [2.0, 20.0]) == 0.5
    assert cost_curve.exponent([10], [1.0]) is None
