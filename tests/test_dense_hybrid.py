"""Dense first stage (bge-small INT8 on ONNX Runtime, ``dense-flat``) and the ``hybrid`` backend, on the tiny
corpus with the real bundled model. The backend contract (tests/test_contract.py) covers both as well."""

import json

import numpy as np
import pytest

from tests.helpers import TINY, need, plain_session

need("onnxruntime", "dense")
need("tokenizers", "dense")

from twostage_search.cli import main
from twostage_search.engine.dense import BGE_QUERY_PREFIX, DenseEncoder, dense_model_files
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.fusion import fuse
from twostage_search.engine.types import Query
from twostage_search.indexes import load
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.hybrid import Component, Fusion, HybridIndex
from twostage_search.indexes.topk import top_k


@pytest.fixture(scope="module")
def dense():
    return DenseEncoder(threads=1)


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory, tiny_docs, dense):
    return DenseFlatIndex.build(tiny_docs, tmp_path_factory.mktemp("dense") / "idx", encoder=dense, progress=False)


def _reference_cls(text: str) -> np.ndarray:
    """bge's embedding computed directly: tokenizer.json + model.onnx, CLS hidden state, L2-normalised."""
    from tokenizers import Tokenizer

    model, tokenizer_file = dense_model_files("bundled:bge-small-en-int8")
    enc = Tokenizer.from_file(str(tokenizer_file)).encode(text)
    ids = np.array([enc.ids], dtype=np.int64)
    session = plain_session(model)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    cls = session.run(None, feed)[0][0, 0]
    return cls / np.linalg.norm(cls)


def test_encoder_matches_direct_cls_pooling(dense, tiny_docs):
    doc = tiny_docs[0].full_text
    assert np.allclose(dense.encode_docs([doc])[0], _reference_cls(doc), atol=1e-5)
    query = "what is the capital of france"
    assert np.allclose(dense.encode_queries([query])[0], _reference_cls(BGE_QUERY_PREFIX + query), atol=1e-5)


def test_encoder_unit_vectors_and_query_independence(dense, tiny_docs):
    vectors = dense.encode_docs([d.full_text for d in tiny_docs])
    assert vectors.shape == (len(tiny_docs), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one = dense.encode_queries(["young kitten pet"])[0]
    assert np.array_equal(dense.encode_queries(["what causes ocean tides", "young kitten pet"])[1], one)
    assert dense.encode_docs([]).shape == (0, 384)


def test_encoder_rejects_bad_settings():
    with pytest.raises(InputError, match="pooling"):
        DenseEncoder(pooling="max")
    with pytest.raises(InputError, match="threads"):
        DenseEncoder(threads=0)


def test_top_k_breaks_ties_by_doc_id_at_the_cutoff():
    scores = np.array([0.5, 0.9, 0.5, 0.5], dtype=np.float32)
    ids = ["d", "a", "c", "b"]
    assert top_k(scores, ids, 2) == [("a", pytest.approx(0.9)), ("b", 0.5)]
    assert [d for d, _ in top_k(scores, ids, 10)] == ["a", "b", "c", "d"]
    assert top_k(scores, ids, 0) == []


def test_dense_index_meta_and_exact_scores(dense_index, dense, tiny_docs):
    meta = dense_index.meta
    assert meta["backend"] == "dense-flat" and meta["dim"] == 384 and meta["dtype"] == "float32"
    assert meta["encoder"] == {
        "model": "bundled:bge-small-en-int8",
        "pooling": "cls",
        "query_prefix": BGE_QUERY_PREFIX,
        "max_length": 256,
        "batch_size": 1,
    }
    retriever = dense_index.retriever(dense)
    ranking, costs = retriever.retrieve_with_cost(Query("q4", "lava and magma eruption"), 3)
    assert [c.stage for c in costs] == ["encode", "retrieve"] and costs[1].docs == 3
    q = dense.encode_queries(["lava and magma eruption"])[0]
    docs = {d.doc_id: d for d in tiny_docs}
    expected = sorted(((float(dense.encode_docs([docs[d].full_text])[0] @ q), d) for d in docs), reverse=True)
    assert ranking.doc_ids[0] == expected[0][1] == "d05"
    assert ranking[0].score == pytest.approx(expected[0][0], abs=1e-5)
    assert ranking[0].title == docs["d05"].title


def test_dense_finds_every_tiny_relevant_document(dense_index, dense, tiny_queries, tiny_qrels):
    retriever = dense_index.retriever(dense)
    for q in tiny_queries:
        assert retriever.retrieve(q, 1).doc_ids == list(tiny_qrels[q.query_id])


def test_dense_float16_and_corrupt_index(tmp_path, tiny_docs, dense, dense_index):
    half = DenseFlatIndex.build(tiny_docs, tmp_path / "half", encoder=dense, dtype="float16", progress=False)
    query = Query("q1", "what is the capital of france")
    assert (
        half.retriever(dense).retrieve(query, 3).doc_ids[0]
        == dense_index.retriever(dense).retrieve(query, 3).doc_ids[0]
    )
    with open(tmp_path / "half" / "vectors.bin", "ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(IndexLoadError, match="corrupt"):
        load(tmp_path / "half")
    with pytest.raises(InputError, match="empty"):
        DenseFlatIndex.build([], tmp_path / "empty", encoder=dense, progress=False)
    assert not (tmp_path / "empty").exists()


def test_default_hybrid_is_bm25_plus_dense_minmax(built_indexes):
    from twostage_search.cli import build_parser

    meta = built_indexes["hybrid"].meta
    assert [(c["name"], c["weight"]) for c in meta["components"]] == [("bm25", 1.0), ("dense", 2.0)]
    assert meta["fusion"] == {"method": "minmax", "k": 60.0, "depth": 100}
    assert build_parser().parse_args(["index", "c.jsonl", "--index", "i"]).backend == "hybrid"


def test_hybrid_equals_fusion_of_its_components(built_indexes, encoder, tiny_queries):
    hybrid = built_indexes["hybrid"]
    retriever = hybrid.retriever(encoder, weights={"bm25": 0.5}, fusion=Fusion("zscore", depth=5))
    parts = {n: i.retriever(encoder) for n, i in hybrid.components.items()}
    for q in tiny_queries:
        expected = fuse(
            [[(h.doc_id, h.score) for h in parts[n].retrieve(q, 5)] for n in ("bm25", "dense")],
            [0.5, 2.0],
            method="zscore",
        )[:4]
        ranking, costs = retriever.retrieve_with_cost(q, 4)
        assert [(h.doc_id, h.score) for h in ranking] == [(d, pytest.approx(s)) for d, s in expected]
        assert [c.stage for c in costs] == ["encode", "retrieve"]


def test_cli_hybrid_with_splade_component(tmp_path, capsys):
    path = tmp_path / "h"
    argv = ["index", str(TINY / "corpus.jsonl"), "--index", str(path), "--no-progress"]
    assert main([*argv, "--components", "splade,dense", "--weight", "dense=2", "--fusion", "rrf"]) == 0
    meta = json.loads((path / "meta.json").read_text())
    assert [(c["name"], c["weight"]) for c in meta["components"]] == [("splade", 1.0), ("dense", 2.0)]
    assert meta["fusion"]["method"] == "rrf"
    assert load(path).retriever().retrieve(Query("q3", "hormone that controls blood sugar in diabetes"), 1).doc_ids == [
        "d04"
    ]
    assert main([*argv, "--components", "colbert"]) == 2
    assert "unknown hybrid component colbert" in capsys.readouterr().err


def test_hybrid_parallel_equals_sequential_and_zero_weight_skips(built_indexes, encoder, tiny_queries):
    hybrid = built_indexes["hybrid"]
    sequential = hybrid.retriever(encoder)
    parallel = hybrid.retriever(encoder, parallel=True)
    try:
        for q in tiny_queries:
            assert parallel.retrieve(q, 5) == sequential.retrieve(q, 5)
    finally:
        parallel.close()
    assert set(hybrid.retriever(encoder, weights={"bm25": 0}).components) == {"dense"}
    with pytest.raises(InputError, match="no component named colbert"):
        hybrid.retriever(encoder, weights={"colbert": 1.0})


def test_compose_existing_indexes_and_errors(built_indexes, dense_index, tmp_path, tiny_docs, encoder):
    bm25 = built_indexes["lucene-bm25"].path
    composed = HybridIndex.compose(
        tmp_path / "h", [Component("bm25", str(bm25), 1.0), Component("dense", str(dense_index.path), 2.0)]
    )
    reopened = load(tmp_path / "h")
    assert isinstance(reopened, HybridIndex) and reopened.weights == {"bm25": 1.0, "dense": 2.0}
    assert composed.meta["components"][0]["path"] == str(bm25)
    assert reopened.retriever().retrieve(Query("q5", "young kitten pet"), 1).doc_ids == ["d07"]
    with pytest.raises(InputError, match="at least two"):
        HybridIndex.compose(tmp_path / "x", [Component("bm25", str(bm25))])
    with pytest.raises(InputError, match="unique"):
        HybridIndex.compose(tmp_path / "x", [Component("a", str(bm25)), Component("a", str(bm25))])
    with pytest.raises(InputError, match="fusion method"):
        Fusion("borda")
    small = DenseFlatIndex.build(tiny_docs[:3], tmp_path / "small", encoder=DenseEncoder(threads=1), progress=False)
    with pytest.raises(InputError, match="different numbers"):
        HybridIndex.compose(tmp_path / "x", [Component("bm25", str(bm25)), Component("d", str(small.path))])
    assert not (tmp_path / "x").exists()


def test_cli_dense_index_hybrid_and_search(tmp_path, built_indexes, capsys):
    dense_dir, hybrid_dir = tmp_path / "dense", tmp_path / "hybrid"
    assert (
        main(
            ["index", str(TINY / "corpus.jsonl"), "--index", str(dense_dir), "--backend", "dense-flat", "--no-progress"]
        )
        == 0
    )
    bm25 = built_indexes["lucene-bm25"].path
    args = [
        "hybrid",
        "--index",
        str(hybrid_dir),
        "--component",
        f"dense={dense_dir}",
        "--component",
        f"bm25={bm25}:0.5",
    ]
    assert main([*args, "--fusion", "minmax"]) == 0
    meta = json.loads((hybrid_dir / "meta.json").read_text())
    assert meta["fusion"]["method"] == "minmax" and [c["weight"] for c in meta["components"]] == [1.0, 0.5]
    capsys.readouterr()
    assert main(["search", "--index", str(hybrid_dir), "what causes ocean tides", "--k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "d10"
    assert main(["hybrid", "--index", str(tmp_path / "bad"), "--component", "dense"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
