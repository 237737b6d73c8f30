"""Approximate dense search (an HNSW graph from usearch beside ``dense-flat``'s vectors) against the exact
scan: recall on the tiny corpus with the real model and on seeded synthetic vectors, exact scores for the
documents found, atomic and deterministic builds."""

import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import need

need("onnxruntime", "dense")
need("usearch", "dense")

from twostage_search.engine.dense import DenseEncoder
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.types import Query
from twostage_search.indexes.dense import DenseFlatIndex, DenseRetriever
from twostage_search.indexes.dense_hnsw import HNSW_FILE, HnswConfig, HnswGraph, build_hnsw
from twostage_search.indexes.topk import top_k


@pytest.fixture(scope="module")
def dense():
    return DenseEncoder(threads=1)


@pytest.fixture(scope="module")
def hnsw_index(tmp_path_factory, tiny_docs, dense):
    path = tmp_path_factory.mktemp("dense-hnsw") / "idx"
    return DenseFlatIndex.build(tiny_docs, path, encoder=dense, progress=False, hnsw=HnswConfig(m=4, ef_search=16))


def _recall(found, reference):
    return len(set(found) & set(reference)) / len(reference)


def test_recall_at_k_against_the_exact_scan_on_the_tiny_corpus(hnsw_index, dense, tiny_queries, tiny_docs):
    approximate = hnsw_index.retriever(dense)
    exact = hnsw_index.retriever(dense, search="exact")
    assert approximate.graph is not None and exact.graph is None
    for q in tiny_queries:
        for k in (3, 10, len(tiny_docs)):
            want, got = exact.retrieve(q, k), approximate.retrieve(q, k)
            assert _recall(got.doc_ids, want.doc_ids) == 1.0, (q.text, k)
            # the documents found are scored exactly against the stored vectors
            by_id = {h.doc_id: h.score for h in want}
            assert [h.score for h in got] == pytest.approx([by_id[d] for d in got.doc_ids], abs=1e-6)


def test_meta_and_graph_file(hnsw_index):
    meta = json.loads((hnsw_index.path / "meta.json").read_text())
    assert meta["hnsw"]["library"] == "usearch" and meta["hnsw"]["file"] == HNSW_FILE
    assert (meta["hnsw"]["m"], meta["hnsw"]["ef_construction"], meta["hnsw"]["ef_search"]) == (4, 128, 16)
    assert hnsw_index.has_hnsw and (hnsw_index.path / HNSW_FILE).is_file()


def _unit_vectors(n, dim, seed):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_recall_on_synthetic_vectors_grows_with_ef_search(tmp_path):
    """2,000 seeded random unit vectors in 32 dimensions, 50 queries: recall@10 of the graph against the exact
    top 10 (numpy), low at ef_search 10 and close to 1 at ef_search 200 (a wide margin below what it gives)."""
    vectors, queries = _unit_vectors(2000, 32, 1), _unit_vectors(50, 32, 2)
    build_hnsw(vectors, tmp_path / HNSW_FILE, HnswConfig(m=8, ef_construction=64))
    ids = [str(i) for i in range(len(vectors))]
    recalls = {}
    for ef in (10, 200):
        graph = HnswGraph(tmp_path / HNSW_FILE, rows=len(vectors), ef_search=ef)
        hits = [graph.search(q, 10) for q in queries]
        exact = [[d for d, _ in top_k(vectors @ q, ids, 10)] for q in queries]
        recalls[ef] = np.mean([_recall([str(r) for r in h], e) for h, e in zip(hits, exact, strict=True)])
    assert recalls[200] >= 0.95
    assert recalls[10] < recalls[200]


def test_same_graph_on_every_build(tmp_path):
    vectors = _unit_vectors(500, 16, 3)
    for name in ("a", "b"):
        build_hnsw(vectors, tmp_path / name, HnswConfig(m=8))
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_threads_share_a_retriever(hnsw_index, dense, tiny_queries):
    retriever = hnsw_index.retriever(dense)
    queries = [*tiny_queries] * 6
    sequential = [retriever.retrieve(q, 5) for q in queries]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(lambda q: retriever.retrieve(q, 5), queries))
    assert concurrent == sequential


def test_add_hnsw_to_an_existing_index_and_errors(tmp_path, tiny_docs, dense):
    path = tmp_path / "idx"
    plain = DenseFlatIndex.build(tiny_docs, path, encoder=dense, progress=False)
    assert not plain.has_hnsw and plain.retriever(dense).graph is None
    with pytest.raises(InputError, match="no HNSW graph"):
        plain.retriever(dense, search="hnsw")
    added = DenseFlatIndex.add_hnsw(path, HnswConfig(m=4))
    assert added.has_hnsw and np.array_equal(added.vectors, plain.vectors)
    query = Query("q", "lava and magma eruption")
    assert added.retriever(dense).retrieve(query, 3).doc_ids == plain.retriever(dense).retrieve(query, 3).doc_ids
    assert added.retriever(dense, ef_search=1).graph.ef_search == 1
    with pytest.raises(InputError, match="search must be"):
        added.retriever(dense, search="ivf")
    with pytest.raises(InputError, match="at least 1"):
        HnswConfig(m=0)
    (added.path / HNSW_FILE).unlink()
    with pytest.raises(IndexLoadError, match=HNSW_FILE.replace(".", r"\.")):
        DenseFlatIndex.open(path)


def test_graph_of_another_size_is_refused(hnsw_index, tmp_path):
    build_hnsw(_unit_vectors(3, 384, 4), tmp_path / HNSW_FILE, HnswConfig())
    with pytest.raises(IndexLoadError, match="corrupt"):
        HnswGraph(tmp_path / HNSW_FILE, rows=len(hnsw_index), ef_search=8)
    assert isinstance(hnsw_index.retriever(), DenseRetriever)


def test_ann_benchmark_chooses_and_applies_a_setting(tmp_path, tiny_docs, dense):
    from tests.helpers import TINY
    from twostage_search.benchmarks.studies.dense_ann import main

    path = tmp_path / "idx"
    DenseFlatIndex.build(tiny_docs, path, encoder=dense, progress=False)
    args = ["--dataset", str(TINY), "--dense-index", str(path), "--m", "4", "--ef", "4,8", "--k", "5", "--apply"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "dense_ann-tiny.json").read_text())
    assert report["queries"] == {"dev": 3, "test": 3} and len(report["settings"]) == 2
    assert report["chosen"]["dev_recall"] >= 0.99 and report["applied"]
    assert DenseFlatIndex.open(path).meta["hnsw"]["ef_search"] == report["chosen"]["ef_search"]


def test_ann_benchmark_takes_dev_and_test_from_a_split_file(tmp_path, tiny_docs, dense):
    from tests.helpers import TINY
    from twostage_search.benchmarks.studies.dense_ann import dev_test_queries, main

    splits = tmp_path / "splits.tsv"
    splits.write_text("query-id\tsplit\nq1\ttrain\nq2\tdev\nq5\tdev\nq3\ttest\nq4\ttest\nq6\ttest\n", encoding="utf-8")
    chosen = dev_test_queries(TINY, 2, splits)
    assert [q.query_id for q in chosen["dev"]] == ["q2", "q5"]
    assert len(chosen["test"]) == 2 and {q.query_id for q in chosen["test"]} < {"q3", "q4", "q6"}
    assert [q.query_id for q in dev_test_queries(TINY, 5, splits)["test"]] == ["q3", "q4", "q6"]
    no_dev = tmp_path / "no-dev.tsv"
    no_dev.write_text("query-id\tsplit\nq1\ttrain\nq3\ttest\n", encoding="utf-8")
    path = tmp_path / "idx"
    DenseFlatIndex.build(tiny_docs, path, encoder=dense, progress=False)
    args = ["--dataset", str(TINY), "--dense-index", str(path), "--m", "4", "--ef", "4", "--out", str(tmp_path)]
    assert main([*args, "--splits-file", str(no_dev)]) != 0


@pytest.fixture(scope="module")
def i8_index(tmp_path_factory, tiny_docs, dense):
    path = tmp_path_factory.mktemp("dense-i8") / "idx"
    config = HnswConfig(m=4, ef_search=16, scalar="i8", refine_factor=2)
    return DenseFlatIndex.build(tiny_docs, path, encoder=dense, progress=False, hnsw=config)


def test_an_8_bit_graph_is_recorded_and_scores_exactly(i8_index, hnsw_index, dense, tiny_queries, tiny_docs):
    meta = i8_index.meta["hnsw"]
    assert (meta["scalar"], meta["refine_factor"]) == ("i8", 2)
    assert hnsw_index.meta["hnsw"]["scalar"] == "f32"  # the index's own dtype when not asked
    # 12 vectors of 384 dimensions at one byte instead of four: the graph file is smaller by at least 12 × 384 × 3
    f32_bytes, i8_bytes = ((i.path / HNSW_FILE).stat().st_size for i in (hnsw_index, i8_index))
    assert f32_bytes - i8_bytes >= len(tiny_docs) * 384 * 3
    retriever, exact = i8_index.retriever(dense), i8_index.retriever(dense, search="exact")
    assert retriever.graph.refine_factor == 2 and i8_index.retriever(dense, refine_factor=1).graph.refine_factor == 1
    for q in tiny_queries:
        want, got = exact.retrieve(q, 5), retriever.retrieve(q, 5)
        assert got.doc_ids == want.doc_ids  # 10 candidates of 12 documents, re-scored exactly
        assert [h.score for h in got] == [h.score for h in want]


def test_bad_scalar_and_refine_factor_are_refused(i8_index, dense):
    with pytest.raises(InputError, match="scalar"):
        HnswConfig(scalar="b1")
    with pytest.raises(InputError, match="refine_factor"):
        HnswConfig(refine_factor=0)
    with pytest.raises(InputError, match="refine_factor"):
        i8_index.retriever(dense, refine_factor=0)


def test_refining_an_8_bit_graph_recovers_the_exact_top_k(tmp_path):
    """3,000 seeded unit vectors in 64 dimensions, 40 queries, an 8-bit graph at ef_search 300: its own top 10
    (refine factor 1) misses some of the exact top 10 (numpy) that re-scoring its top 50 (factor 5) finds."""
    vectors, queries = _unit_vectors(3000, 64, 5), _unit_vectors(40, 64, 6)
    build_hnsw(vectors, tmp_path / HNSW_FILE, HnswConfig(m=8, ef_construction=64, scalar="i8"))
    ids = [f"d{i:04d}" for i in range(len(vectors))]
    index = SimpleNamespace(vectors=vectors, doc_ids=ids, path=tmp_path)
    encoder = SimpleNamespace(dim=64)
    recalls = {}
    for factor in (1, 5):
        graph = HnswGraph(tmp_path / HNSW_FILE, rows=len(vectors), ef_search=300, refine_factor=factor)
        retriever = DenseRetriever(index, encoder, graph=graph)
        found = [retriever.search_vector(q, 10) for q in queries]
        for q, hits in zip(queries, found, strict=True):  # scores are the exact inner products
            assert [s for _, s in hits] == pytest.approx([float(vectors[int(d[1:])] @ q) for d, _ in hits], abs=1e-6)
        exact = [[d for d, _ in top_k(vectors @ q, ids, 10)] for q in queries]
        recalls[factor] = np.mean([_recall([d for d, _ in h], e) for h, e in zip(found, exact, strict=True)])
    assert recalls[5] >= 0.98
    assert recalls[1] < recalls[5]


def test_ann_benchmark_tries_scalar_kinds_and_refine_factors_without_timing(tmp_path, i8_index):
    from tests.helpers import TINY
    from twostage_search.benchmarks.studies.dense_ann import main

    graphs = tmp_path / "graphs"
    args = ["--dataset", str(TINY), "--dense-index", str(i8_index.path), "--m", "4", "--ef", "4", "--k", "3"]
    args += ["--scalar", "f32,i8", "--refine", "1,2", "--graphs", str(graphs), "--no-times", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "dense_ann-tiny.json").read_text())
    rows = report["settings"]
    assert [(r["scalar"], r["refine_factor"]) for r in rows] == [("f32", 1), ("f32", 2), ("i8", 1), ("i8", 2)]
    assert not report["timed"] and all("p50_ms" not in r for r in rows)
    assert len(list(graphs.iterdir())) == 2
    for r in rows:  # KiB read: the graph's distances at 4 or 1 bytes a dimension, then factor × k float32 rows
        per = 4 if r["scalar"] == "f32" else 1
        assert r["kib_read"] == pytest.approx(
            (r["distances"] * 384 * per + r["refine_factor"] * 3 * 384 * 4) / 1024, abs=0.06
        )
    assert main(args) == 0  # the kept graphs are reused: no build time
    assert all(
        r["build_seconds"] is None for r in json.loads((tmp_path / "dense_ann-tiny.json").read_text())["settings"]
    )


def test_cli_adds_an_8bit_graph_to_a_flat_index_and_to_a_hybrids_dense_part(tmp_path, tiny_docs, dense, capsys):
    from twostage_search.cli import main
    from twostage_search.indexes.hybrid import Component, HybridIndex

    flat = DenseFlatIndex.build(tiny_docs, tmp_path / "flat", encoder=dense, progress=False)
    assert not flat.has_hnsw
    settings = ["--m", "4", "--ef-search", "16", "--scalar", "i8", "--refine-factor", "2"]
    argv = ["hnsw", "--index", str(flat.path), *settings]
    assert main(argv) == 0
    graphed = DenseFlatIndex.open(tmp_path / "flat")
    stored = graphed.meta["hnsw"]
    assert (stored["m"], stored["ef_search"], stored["scalar"], stored["refine_factor"]) == (4, 16, "i8", 2)
    retriever = graphed.retriever(dense)
    assert retriever.graph is not None and retriever.graph.refine_factor == 2
    exact = graphed.retriever(dense, search="exact")
    query = Query("q", "glucose metabolism in the liver")
    assert retriever.retrieve(query, 5).doc_ids == exact.retrieve(query, 5).doc_ids  # ef 16 ≥ the documents: all seen

    other = DenseFlatIndex.build(tiny_docs, tmp_path / "other", encoder=dense, progress=False)
    hybrid = tmp_path / "hybrid"
    HybridIndex.compose(
        hybrid, [Component("lexical", str(other.path), 1.0), Component("dense", str(tmp_path / "flat"), 2.0)]
    )
    assert main(["hnsw", "--index", str(hybrid), "--ef-search", "32"]) == 0
    assert DenseFlatIndex.open(tmp_path / "flat").meta["hnsw"]["ef_search"] == 32
    assert not DenseFlatIndex.open(other.path).has_hnsw
    capsys.readouterr()
    assert main(["hnsw", "--index", str(hybrid), "--component", "splade"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no component 'splade'" in err
