"""Building from pre-encoded vectors (``build_encoded``) gives the index that encoding the texts gives."""

import json

import numpy as np
import pytest

from tests.helpers import need

need("scipy", "impact")
need("onnxruntime", "dense")

from twostage_search.engine.dense import DenseEncoder
from twostage_search.engine.errors import InputError
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.dense_hnsw import HnswConfig
from twostage_search.indexes.docstore import DocStore
from twostage_search.indexes.impact_csc import ImpactCscIndex
from twostage_search.indexes.lucene_impact import LuceneImpactIndex

TIMES = ("built_at", "build_seconds", "hnsw")


def _meta(index):
    meta = {k: v for k, v in index.meta.items() if k not in TIMES}
    if "hnsw" in index.meta:
        meta["hnsw"] = {k: v for k, v in index.meta["hnsw"].items() if k != "build_seconds"}
    return meta


def _texts(index, docs):
    store = DocStore(index.path)
    found = store.get_many([d.doc_id for d in docs])
    return {d: (doc.title, doc.text) for d, doc in found.items()}


def test_dense_from_vectors_equals_dense_from_texts(tmp_path, tiny_docs, tiny_queries):
    encoder = DenseEncoder(threads=1)
    config = HnswConfig(m=4, ef_search=16)
    built = DenseFlatIndex.build(tiny_docs, tmp_path / "texts", encoder=encoder, progress=False, hnsw=config)
    halves = [tiny_docs[:5], tiny_docs[5:]]  # batches of any size
    batches = [(docs, encoder.encode_docs([d.full_text for d in docs])) for docs in halves]
    encoded = DenseFlatIndex.build_encoded(batches, tmp_path / "vectors", encoder=encoder, progress=False, hnsw=config)
    for name in ("vectors.bin", "doc_ids.json", "hnsw.usearch"):
        assert (built.path / name).read_bytes() == (encoded.path / name).read_bytes()
    assert _meta(built) == _meta(encoded)
    assert _texts(built, tiny_docs) == _texts(encoded, tiny_docs)
    for q in tiny_queries:
        assert built.retriever(encoder).retrieve(q, 5) == encoded.retriever(encoder).retrieve(q, 5)


def test_dense_from_vectors_refuses_a_wrong_shape(tmp_path, tiny_docs):
    encoder = DenseEncoder(threads=1)
    with pytest.raises(InputError, match="vectors"):
        DenseFlatIndex.build_encoded(
            [(tiny_docs[:2], np.zeros((2, 3), dtype=np.float32))], tmp_path / "x", encoder=encoder
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backend", [ImpactCscIndex, LuceneImpactIndex])
def test_splade_from_vectors_equals_splade_from_texts(tmp_path, tiny_docs, tiny_queries, encoder, backend):
    built = backend.build(tiny_docs, tmp_path / "texts", encoder=encoder, progress=False)
    # build() encodes the 12 documents as one chunk: the same call gives the same floats
    vectors = encoder.encode_docs([d.full_text for d in tiny_docs])
    batches = [(tiny_docs[:7], vectors[:7]), (tiny_docs[7:], vectors[7:])]
    encoded = backend.build_encoded(batches, tmp_path / "vectors", encoder=encoder, progress=False)
    assert _meta(built) == _meta(encoded)
    if backend is ImpactCscIndex:
        for name in ("terms.json", "doc_ids.json"):
            assert json.loads((built.path / name).read_text()) == json.loads((encoded.path / name).read_text())
        for name in ("indptr.npy", "docs.npy", "impacts.npy"):
            assert np.array_equal(np.load(built.path / "postings" / name), np.load(encoded.path / "postings" / name))
    assert _texts(built, tiny_docs) == _texts(encoded, tiny_docs)
    a, b = built.retriever(encoder), encoded.retriever(encoder)
    for q in tiny_queries:
        assert a.retrieve(q, 100) == b.retrieve(q, 100)
    a.close()
    b.close()


@pytest.mark.parametrize("backend", [ImpactCscIndex, LuceneImpactIndex])
def test_splade_from_vectors_refuses_a_batch_that_does_not_match(tmp_path, tiny_docs, encoder, backend):
    vectors = encoder.encode_docs([d.full_text for d in tiny_docs[:3]])
    with pytest.raises(InputError, match="3 documents, 2 vectors"):
        backend.build_encoded([(tiny_docs[:3], vectors[:2])], tmp_path / "x", encoder=encoder, progress=False)
    assert not (tmp_path / "x").exists()
