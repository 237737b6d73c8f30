"""The ``opensearch-knn`` backend (dense vectors in the k-NN plugin's ``knn_vector`` field, Lucene HNSW) on the
real local OpenSearch node, and the hybrid fused over the cluster's SPLADE and k-NN answers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.helpers import TINY, need
from twostage_search import indexes
from twostage_search.cli import main
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Query

need("opensearchpy", "opensearch")
need("onnxruntime", "dense")

from twostage_search.engine.dense import DenseEncoder
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.hybrid import Component, HybridIndex
from twostage_search.indexes.opensearch.knn import KnnMethod, OpenSearchKnnIndex, inner_product


@pytest.fixture(scope="module")
def dense():
    return DenseEncoder(threads=1)


@pytest.fixture(scope="module")
def flat(tmp_path_factory, tiny_docs, dense):
    return DenseFlatIndex.build(tiny_docs, tmp_path_factory.mktemp("flat") / "idx", encoder=dense, progress=False)


def _exact(dense, docs, text):
    """Expected (doc_id, cosine) by an independent numpy dot product of the encoder's own vectors."""
    matrix = np.asarray(dense.encode_docs([d.full_text for d in docs]), dtype=np.float64)
    query = np.asarray(dense.encode_queries([text])[0], dtype=np.float64)
    scores = matrix @ query
    return sorted(((d.doc_id, float(s)) for d, s in zip(docs, scores, strict=True)), key=lambda p: (-p[1], p[0]))


@pytest.mark.parametrize(("score", "dot"), [(2.0, 1.0), (1.6, 0.6), (1.0, 0.0), (0.5, -1.0), (0.8, -0.25)])
def test_lucene_innerproduct_scores_map_back_to_the_inner_product(score, dot):
    assert inner_product(score) == pytest.approx(dot)


def test_rankings_equal_the_exact_scan(knn_index, dense, tiny_docs, tiny_queries):
    """On 12 documents with a candidate queue of 100 the graph search is exhaustive: it must equal the scan."""
    retriever = knn_index.retriever(dense)
    for q in tiny_queries:
        expected = _exact(dense, tiny_docs, q.text)
        got = retriever.retrieve(q, k=len(tiny_docs))
        assert got.doc_ids == [d for d, _ in expected], q.text
        # Lucene sums the float32 products; the reference sums float64 ones: they differ in the last digits.
        assert [h.score for h in got] == pytest.approx([s for _, s in expected], abs=1e-4)
        assert retriever.retrieve(q, k=3).doc_ids == got.doc_ids[:3]


def test_texts_meta_and_load(knn_index, tiny_docs):
    by_id = {d.doc_id: d for d in tiny_docs}
    for hit in knn_index.retriever().retrieve(Query("q", "what causes ocean tides"), k=4):
        assert (hit.title, hit.text) == (by_id[hit.doc_id].title, by_id[hit.doc_id].text)
    meta = json.loads((knn_index.path / "meta.json").read_text())
    assert meta["backend"] == "opensearch-knn" and meta["doc_count"] == len(tiny_docs) == len(knn_index)
    assert meta["dim"] == 384 and meta["method"] == {"m": 16, "ef_construction": 100, "ef_search": 100}
    assert meta["opensearch"]["index"].startswith(meta["opensearch"]["alias"] + "--")
    mapping = knn_index.client.indices.get_mapping(index=knn_index.alias)
    (body,) = mapping.values()
    field = body["mappings"]["properties"]["dense"]
    assert field["type"] == "knn_vector" and field["dimension"] == 384
    assert field["method"]["engine"] == "lucene" and field["method"]["space_type"] == "innerproduct"
    assert isinstance(indexes.load(knn_index.path), OpenSearchKnnIndex)


def test_dense_flat_moves_without_re_encoding(tmp_path, flat, dense, tiny_queries, opensearch_url, name):
    """``from_dense`` puts a dense-flat index's own vectors on the cluster: the exact scan's ranking and scores."""
    moved = OpenSearchKnnIndex.from_dense(flat.path, tmp_path / "moved", hosts=[opensearch_url], index_name=name())
    assert len(moved) == len(flat) and moved.meta["encoder"] == flat.meta["encoder"]
    on_cluster, local = moved.retriever(dense), flat.retriever(dense, search="exact")
    for q in tiny_queries:
        got, expected = on_cluster.retrieve(q, k=6), local.retrieve(q, k=6)
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)
        assert [h.text for h in got] == [h.text for h in expected]


def test_from_dense_keeps_the_recorded_query_side(tmp_path, flat, tiny_queries, opensearch_url, name):
    """A dense-flat index searched with a student query side moves with it: the cluster answers as the exact
    scan with that student does."""
    shutil.copytree(flat.path, tmp_path / "flat-static")
    static = DenseFlatIndex.set_query_encoder(tmp_path / "flat-static", "bundled:bge-small-query-static")
    moved = OpenSearchKnnIndex.from_dense(static.path, tmp_path / "moved", hosts=[opensearch_url], index_name=name())
    assert moved.meta["query_encoder"] == "bundled:bge-small-query-static"
    on_cluster, local = moved.retriever(), static.retriever(search="exact")
    assert type(on_cluster.encoder).__name__ == "StaticQueryEncoder"
    full = moved.retriever(query_encoder="full")
    assert type(full.encoder).__name__ != "StaticQueryEncoder"
    for q in tiny_queries:
        got, expected = on_cluster.retrieve(q, k=6), local.retrieve(q, k=6)
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_hybrid_over_the_cluster_equals_the_embedded_hybrid(tmp_path, os_index, knn_index, lucene_index, flat,
                                                            tiny_queries, encoder):  # fmt: skip
    """SPLADE (rank_features) + k-NN on the cluster, fused by the hybrid, gives the embedded hybrid's ranking
    (lucene-impact + dense-flat over the same corpus)."""
    cluster = HybridIndex.compose(
        tmp_path / "cluster", [Component("splade", str(os_index.path)), Component("dense", str(knn_index.path))]
    )
    embedded = HybridIndex.compose(
        tmp_path / "embedded", [Component("splade", str(lucene_index.path)), Component("dense", str(flat.path))]
    )
    on_cluster = cluster.retriever(encoder, parallel=True)
    local = embedded.retriever(encoder)
    for q in tiny_queries:
        got, expected = on_cluster.retrieve(q, k=8), local.retrieve(q, k=8)
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-3)


def test_cli_index_and_search(tmp_path, opensearch_url, name, capsys):
    path = tmp_path / "idx"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(path), "--backend", "opensearch-knn"]
    assert main([*argv, "--opensearch-url", opensearch_url, "--opensearch-index", name(), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(path), "what is the capital of france", "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["doc_id"] == "d01" and "Paris" in hits[0]["text"]


def test_bad_settings_are_refused_before_any_work(tmp_path, tiny_docs, opensearch_url, knn_index):
    with pytest.raises(InputError, match="m ≥ 2"):
        KnnMethod(m=1)
    with pytest.raises(InputError, match="bad OpenSearch index name"):
        OpenSearchKnnIndex.build(tiny_docs, tmp_path / "x", hosts=[opensearch_url], index_name="Bad--Name")
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match="ef_search"):
        knn_index.retriever(ef_search=0)
