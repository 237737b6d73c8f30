"""The synthetic corpus generators keep what they promise, on inputs small enough to check by hand.

Frequencies are checked on seeded draws of tens of thousands of items against the hand-computed
probabilities, within about four standard deviations of a binomial share (deterministic: the same seed
gives the same draw on every machine).
"""

from collections import Counter

import numpy as np
import pytest

from twostage_search.benchmarks.synthetic import GaussianDense, ResampledSparse, UnigramTexts
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import SparseVector


def test_unigram_texts_keep_token_frequencies_and_lengths():
    # tokens: a twice, b, c, d once each → P(a) = 2/5, P(b) = P(c) = P(d) = 1/5; lengths 2 and 3, one each
    model = UnigramTexts(["a b", "a c d"])
    texts = model.generate(20_000, seed=7)
    lengths = Counter(len(t.split()) for t in texts)
    tokens = Counter(tok for t in texts for tok in t.split())
    assert set(lengths) == {2, 3}
    assert set(tokens) == {"a", "b", "c", "d"}
    assert abs(lengths[2] / 20_000 - 0.5) < 0.015  # sd 0.0035
    total = sum(tokens.values())
    assert abs(tokens["a"] / total - 0.4) < 0.01  # sd 0.0022 over ~50,000 tokens
    for t in "bcd":
        assert abs(tokens[t] / total - 0.2) < 0.01


def test_generators_are_seeded_and_blocks_are_independent():
    model = UnigramTexts(["a b", "a c d"])
    assert model.generate(50, seed=1, start=100) == model.generate(50, seed=1, start=100)
    assert model.generate(50, seed=1, start=100) != model.generate(50, seed=1, start=150)
    sparse = ResampledSparse([SparseVector.from_dict({"a": 1.0, "b": 2.0})])
    assert list(sparse.generate(5, seed=3)) == list(sparse.generate(5, seed=3))
    dense = GaussianDense(np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
    assert np.array_equal(dense.generate(4, seed=2, start=8), dense.generate(4, seed=2, start=8))


def test_resampled_sparse_keeps_document_frequencies_of_one_term_vectors():
    # df(a) = 2, df(b) = 1: a synthetic vector holds a with probability 2/3; weights 1, 2 or 0.5, a third each
    real = [SparseVector.from_dict({"a": 1.0}), SparseVector.from_dict({"a": 2.0}), SparseVector.from_dict({"b": 0.5})]
    vectors = list(ResampledSparse(real).generate(30_000, seed=5))
    assert all(len(v) == 1 for v in vectors)
    df = Counter(v.terms[0] for v in vectors)
    assert abs(df["a"] / 30_000 - 2 / 3) < 0.012  # sd 0.0027
    weights = Counter(v.weights[0] for v in vectors)
    assert set(weights) == {1.0, 2.0, 0.5}
    assert abs(weights[0.5] / 30_000 - 1 / 3) < 0.012


def test_resampled_sparse_keeps_each_source_vectors_length_and_weights():
    real = [SparseVector.from_dict({"a": 3.0, "b": 1.0}), SparseVector.from_dict({"c": 2.0})]
    vectors = list(ResampledSparse(real).generate(2_000, seed=11))
    shapes = Counter(tuple(sorted(v.weights)) for v in vectors)
    assert set(shapes) == {(1.0, 3.0), (2.0,)}  # a real vector's weights, never a mix
    assert abs(shapes[(2.0,)] / 2_000 - 0.5) < 0.045  # source chosen uniformly (sd 0.011)
    assert all(set(v.terms) <= {"a", "b", "c"} and len(set(v.terms)) == len(v) for v in vectors)
    # df: a, b, c once each → every term about equally often over the 1.5 postings per vector
    df = Counter(t for v in vectors for t in v.terms)
    assert all(abs(df[t] / sum(df.values()) - 1 / 3) < 0.04 for t in "abc")


def test_gaussian_dense_uses_the_real_mean_and_covariance():
    # points on the line y = x around (2, 2): covariance [[1, 1], [1, 1]] (rank one), so every sample is
    # (2 + z, 2 + z) and normalises to ±(1/√2, 1/√2); negative only when z < −2 (2.3% of draws)
    model = GaussianDense(np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    assert np.allclose(model.mean, [2.0, 2.0])
    assert np.allclose(model.covariance, [[1.0, 1.0], [1.0, 1.0]])
    rows = model.generate(10_000, seed=4)
    assert rows.dtype == np.float32 and rows.shape == (10_000, 2)
    assert np.allclose(np.abs(rows), np.sqrt(0.5), atol=1e-6)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    negative = float((rows[:, 0] < 0).mean())
    assert abs(negative - 0.0228) < 0.006  # sd 0.0015


def test_bad_inputs_are_refused():
    with pytest.raises(InputError):
        UnigramTexts(["", "  "])
    with pytest.raises(InputError):
        ResampledSparse([])
    with pytest.raises(InputError):
        GaussianDense(np.zeros((1, 3)))
