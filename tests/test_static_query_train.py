"""Training of the static query table: the listwise KL, the teacher's candidates, dev nDCG, and a tiny training
run whose vectors the encoder (engine/static_query.py, independent code) reproduces."""

import math

import numpy as np
import pytest

from tests.helpers import need

torch = need("torch", "train")
need("ir_measures", "bench")

from twostage_search.benchmarks.studies.query_static_train import (
    Corpus,
    DevSet,
    Settings,
    dense_ndcg,
    listwise_kl,
    teacher_top,
    train,
)
from twostage_search.engine.static_query import static_vectors


def test_listwise_kl_by_hand():
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]] * 2)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    student = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    got = listwise_kl(student, teacher, candidates, tau=1.0)
    # row 0: p_t = softmax(1, 0), p_s = softmax(0, 1); log p_t − log p_s = (1, −1), so
    # KL = p_t[0] − p_t[1] = (e − 1)/(e + 1) = tanh(1/2); row 1: the same distribution, 0
    assert got.tolist() == pytest.approx([math.tanh(0.5), 0.0], abs=1e-6)
    # temperature 1/2: scores (2, 0) and (0, 2), log-ratio (2, −2), KL = 2 (p_t[0] − p_t[1]) = 2 tanh(1)
    got = float(listwise_kl(student[:1], teacher[:1], candidates[:1], tau=0.5)[0])
    assert got == pytest.approx(2 * math.tanh(1.0), abs=1e-6)


def test_teacher_top_picks_the_highest_scoring_documents():
    docs = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]], dtype=np.float32)
    got = [set(row) for row in teacher_top(targets, docs, 2, chunk=2).tolist()]
    # scores: (1, .6, 0, −1), (0, .8, 1, 0), (−.6, .28, .8, .6)
    assert got == [{0, 1}, {1, 2}, {2, 3}]


def test_dense_ndcg_of_exact_search():
    corpus = Corpus(["a", "b", "c"], np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32))
    dev = DevSet(["q1", "q2"], [[], []], np.zeros((2, 2)), {"q1": {"b": 1}, "q2": {"c": 2, "a": 1}}, corpus)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # q1 ranks a, b, c: its one relevant document second, 1/log2(3). q2 ranks c, b, a (gains 2, 0, 1; ideal 2, 1):
    # (2 + 1/log2(4)) / (2 + 1/log2(3)), the grade as the gain (trec_eval's nDCG)
    q2 = (2 + 1 / 2) / (2 + 1 / math.log2(3))
    assert dense_ndcg(vectors, dev) == pytest.approx((1 / math.log2(3) + q2) / 2, abs=1e-6)


def test_training_moves_towards_the_teacher_and_the_encoder_reproduces_it():
    """Vocabulary of 4 tokens in 2-d; the teacher's vector of every text is (0, 1). Texts of tokens 1 and 2 start
    at (1, 0): training with token weights and the listwise term turns them, the history's dev cosine is the
    one the encoder's own arithmetic gives for the kept weights, and the unused token 3 keeps its row."""
    table = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.1], [5.0, 5.0]], dtype=np.float32)
    texts = [[1], [2], [1, 2], [2, 2, 1]] * 8
    targets = np.tile(np.array([[0.0, 1.0]], dtype=np.float32), (len(texts), 1))
    corpus = Corpus(["x", "y", "z"], np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32))
    dev = {"set": DevSet(["q"], [[1, 2]], np.array([[0.0, 1.0]], dtype=np.float32), {"q": {"y": 1}}, corpus)}
    settings = Settings(epochs=5, lr=0.1, batch=8, token_weights=True, listwise=1.0, tau=0.1, top=2, random=1)
    weights, history = train(table, texts, targets, ["c"] * len(texts), {"c": corpus}, dev, settings)
    assert history[0]["cos/set"] == pytest.approx(0.05 / math.sqrt(1.0 + 0.05**2), abs=1e-4)  # (1, .05) vs (0, 1)
    assert history[0]["ndcg/set"] == pytest.approx(1 / math.log2(4), abs=1e-4)  # y is third: x, z, y
    kept = max(history, key=lambda h: h["ndcg/set"])
    assert kept["ndcg/set"] == 1.0 and history[-1]["cos/set"] > 0.9
    vector = static_vectors([[1, 2]], weights)[0]
    assert float(vector @ np.array([0.0, 1.0])) == pytest.approx(kept["cos/set"], abs=1e-3)
    assert np.array_equal(weights["table"][3], table[3]) and weights["weights"][3] == 1.0
    assert set(weights) == {"table", "bias", "weights"}
