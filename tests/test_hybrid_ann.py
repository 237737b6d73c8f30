"""The dense component's ``ef_search`` chosen inside a hybrid by the fused ranking (``hybrid_ann``), on the
tiny corpus with the real bundled model: a hybrid of a dense index with a graph and one without."""

import json

import pytest

from tests.helpers import TINY, need

need("onnxruntime", "dense")
need("usearch", "dense")

from twostage_search.benchmarks.studies.hybrid_ann import main
from twostage_search.engine.dense import DenseEncoder
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.dense_hnsw import HnswConfig
from twostage_search.indexes.hybrid import Component, HybridIndex

SPLITS = "query-id\tsplit\nq1\tdev\nq2\tdev\nq3\tdev\nq4\ttest\nq5\ttest\nq6\ttest\n"


@pytest.fixture(scope="module")
def hybrids(tmp_path_factory, tiny_docs):
    root = tmp_path_factory.mktemp("hybrid-ann")
    encoder = DenseEncoder(threads=1)
    graph = DenseFlatIndex.build(tiny_docs, root / "graph", encoder=encoder, progress=False, hnsw=HnswConfig(m=4))
    flat = DenseFlatIndex.build(tiny_docs, root / "flat", encoder=encoder, progress=False)
    with_graph = HybridIndex.compose(
        root / "hybrid", [Component("dense", str(graph.path), 2.0), Component("flat", str(flat.path))]
    )
    without = HybridIndex.compose(
        root / "no-graph", [Component("dense", str(flat.path), 2.0), Component("flat", str(flat.path))]
    )
    (root / "splits.tsv").write_text(SPLITS, encoding="utf-8")
    return root, with_graph, without


def test_every_setting_finds_the_reference_when_the_corpus_is_smaller_than_the_depth(hybrids, tmp_path):
    """12 documents, depth 100: every search returns all 12, so every ef_search gives the exact scan's fused
    ranking (no difference, identical tops, full dense recall) and the smallest ef_search is chosen."""
    root, hybrid, _ = hybrids
    args = ["--dataset", str(TINY), "--hybrid", str(hybrid.path), "--splits-file", str(root / "splits.tsv")]
    args += ["--extra", f"again={hybrid.path}", "--ef", "2,8", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "hybrid_ann-tiny.json").read_text())
    assert report["queries"] == {"dev": 3, "test": 3}
    assert [(r["hybrid"], r["ef_search"], r["scalar"]) for r in report["settings"]] == [
        ("hybrid", 2, "f32"),
        ("hybrid", 8, "f32"),
        ("again", 2, "f32"),
        ("again", 8, "f32"),
    ]
    for row in report["settings"]:
        for split in ("dev", "test"):
            cell = row[split]
            assert (cell["delta_nDCG@10"], cell["delta_R@100"]) == (0.0, 0.0)
            assert (cell["identical_top"], cell["mean_overlap"], cell["dense_recall"]) == (1.0, 1.0, 1.0)
            assert cell["distances"] > 0
            assert cell["nDCG@10"] == report["reference"][split]["nDCG@10"]
    assert report["chosen"]["hybrid"]["ef_search"] == 2 and report["chosen"]["again"]["ef_search"] == 2


def test_a_hybrid_whose_dense_component_has_no_graph_is_refused(hybrids, tmp_path):
    root, _, without = hybrids
    args = ["--dataset", str(TINY), "--hybrid", str(without.path), "--splits-file", str(root / "splits.tsv")]
    assert main([*args, "--out", str(tmp_path)]) != 0
    assert not (tmp_path / "hybrid_ann-tiny.json").exists()
