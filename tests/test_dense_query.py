"""The cheaper dense query side (a truncated bge-small with a fitted head), the query-vector cache, and document
encoding order, on the tiny corpus with the real bundled models."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import need

need("onnxruntime", "dense")
need("tokenizers", "dense")
need("onnx", "dense")

from twostage_search.engine.dense import DenseEncoder
from twostage_search.engine.dense_query import (
    HEAD_FILE,
    STUDENT_FILE,
    CachedQueryEncoder,
    TruncatedQueryEncoder,
    check_teacher,
    read_student,
)
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.types import Query
from twostage_search.indexes.dense import DenseFlatIndex

STUDENT = "bundled:bge-small-query-l2"


@pytest.fixture(scope="module")
def dense():
    return DenseEncoder(threads=1)


@pytest.fixture(scope="module")
def student():
    return TruncatedQueryEncoder(STUDENT, threads=1)


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory, tiny_docs, dense):
    return DenseFlatIndex.build(tiny_docs, tmp_path_factory.mktemp("dense") / "idx", encoder=dense, progress=False)


def test_bucketed_document_encoding_equals_one_by_one_in_input_order(dense, tiny_docs):
    texts = [d.full_text for d in tiny_docs]
    assert len({len(t) for t in texts}) > 1  # the sort by length really reorders them
    together = dense.encode_docs(texts)  # sorted by token length, encoded, order restored
    for row, text in enumerate(texts):
        assert np.array_equal(together[row], dense.encode_docs([text])[0])


def test_student_loads_offline_and_names_its_teacher(student, dense):
    directory = Path(resolve_model(STUDENT))
    assert (directory / HEAD_FILE).is_file() and (directory / STUDENT_FILE).is_file()
    config = read_student(directory)
    assert config["layers"] == student.layers == 2
    assert student.dim == dense.dim == 384 and student.query_prefix == dense.query_prefix
    check_teacher(config, dense.config())  # fitted onto the encoder the default index is built with
    with pytest.raises(InputError, match="model"):
        check_teacher(config, {**dense.config(), "model": "some/other-model"})


def test_student_vectors_are_the_head_applied_to_the_trunk(student):
    head = np.load(Path(resolve_model(STUDENT)) / HEAD_FILE)
    texts = ["what causes ocean tides", "young kitten pet"]
    features = student.features(texts)
    assert features.shape == (2, 384)  # mean of the hidden states after layer 2
    mapped = features @ head["weight"] + head["bias"]
    expected = mapped / np.linalg.norm(mapped, axis=1, keepdims=True)
    assert np.allclose(student.encode_queries(texts), expected, atol=1e-6)
    assert np.array_equal(student.encode_queries(texts)[1], student.encode_queries(["young kitten pet"])[0])
    assert student.encode_queries([]).shape == (0, 384)


def test_student_lands_in_the_document_space(dense_index, tiny_queries, tiny_qrels):
    """Each tiny query's one relevant document (hand-checked) is the student's top 1 over full-model documents."""
    retriever = dense_index.retriever(query_encoder=STUDENT)
    for query in tiny_queries:
        top = retriever.retrieve(query, 1)
        assert [h.doc_id for h in top] == list(tiny_qrels[query.query_id]), query.text


def test_index_records_the_query_side_and_full_restores_it(tmp_path, tiny_docs, dense):
    path = tmp_path / "idx"
    DenseFlatIndex.build(tiny_docs[:4], path, encoder=dense, progress=False)
    index = DenseFlatIndex.set_query_encoder(path, STUDENT)
    assert json.loads((path / "meta.json").read_text())["query_encoder"] == STUDENT
    assert isinstance(index.retriever().encoder, TruncatedQueryEncoder)
    assert isinstance(index.retriever(query_encoder="full").encoder, DenseEncoder)
    assert np.array_equal(index.vectors, DenseFlatIndex.open(path).vectors)
    index = DenseFlatIndex.set_query_encoder(path, "full")
    assert "query_encoder" not in index.meta and isinstance(index.retriever().encoder, DenseEncoder)
    with pytest.raises(InputError):
        DenseFlatIndex.set_query_encoder(path, str(tmp_path / "missing"))


class CountingEncoder:
    """A query side that returns a fixed vector per text and counts the texts it encodes."""

    dim = 2
    query_prefix = ""

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode_queries(self, texts):
        self.encoded.extend(texts)
        return np.asarray([[len(t), 1.0] for t in texts], dtype=np.float32)

    def count_tokens(self, texts):
        return len(texts)


def test_query_cache_hits_repeats_and_evicts_least_recent():
    inner = CountingEncoder()
    cached = CachedQueryEncoder(inner, maxsize=2)
    assert cached.encode_queries(["ab", "c"]).tolist() == [[2.0, 1.0], [1.0, 1.0]]
    assert cached.encode_queries(["c", "ab"]).tolist() == [[1.0, 1.0], [2.0, 1.0]]
    assert inner.encoded == ["ab", "c"] and (cached.hits, cached.misses) == (2, 2)
    cached.encode_queries(["xyz"])  # evicts "c": "ab" was used after it
    cached.encode_queries(["ab"])
    cached.encode_queries(["c"])
    assert inner.encoded == ["ab", "c", "xyz", "c"]
    with pytest.raises(InputError):
        CachedQueryEncoder(inner, maxsize=0)


def test_retriever_query_cache_gives_the_same_ranking(dense_index):
    plain = dense_index.retriever()
    cached = dense_index.retriever(query_cache=8)
    query = Query("q", "young kitten pet")
    first, again = cached.retrieve(query, 3), cached.retrieve(query, 3)
    assert [(h.doc_id, h.score) for h in first] == [(h.doc_id, h.score) for h in plain.retrieve(query, 3)]
    assert [(h.doc_id, h.score) for h in again] == [(h.doc_id, h.score) for h in first]
    assert cached.encoder.hits == 1
