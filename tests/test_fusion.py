"""Rank fusion (engine/fusion.py) against values computed by hand."""

import math

import pytest

from twostage_search.engine.fusion import fuse, normalise, rrf, score_fusion

A = [("a", 10.0), ("b", 6.0), ("c", 2.0)]
B = [("b", 3.0), ("d", 1.0)]


def _close(got, expected):
    assert [d for d, _ in got] == [d for d, _ in expected]
    for (_, g), (_, e) in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-12)


def test_rrf_weighted_by_hand():
    # k=1, weights (1, 2): a 1/2; b 1/3 + 2/2; c 1/4; d 2/3
    _close(rrf([A, B], [1.0, 2.0], k=1), [("b", 1 / 3 + 1), ("d", 2 / 3), ("a", 1 / 2), ("c", 1 / 4)])


def test_rrf_default_k_60_equal_weights():
    # b is 2nd in A and 1st in B: 1/62 + 1/61; a 1/61; c 1/63; d 1/62
    _close(rrf([A, B]), [("b", 1 / 62 + 1 / 61), ("a", 1 / 61), ("d", 1 / 62), ("c", 1 / 63)])


def test_rrf_uses_rank_not_score():
    assert rrf([[("x", 100.0), ("y", 99.0)]]) == rrf([[("x", 0.2), ("y", 0.1)]])


def test_minmax_fusion_by_hand():
    # A → a 1, b 0.5, c 0; B → b 1, d 0; missing documents get the ranking's lowest (0)
    # a 1 + 0; b 0.5 + 1; c 0 + 0; d 0 + 0 (tie c, d by doc_id)
    _close(score_fusion([A, B], method="minmax"), [("b", 1.5), ("a", 1.0), ("c", 0.0), ("d", 0.0)])
    # weights (2, 1): a 2; b 1 + 1; c 0; d 0 → a and b tie at 2, a first by doc_id
    _close(score_fusion([A, B], [2.0, 1.0], method="minmax"), [("a", 2.0), ("b", 2.0), ("c", 0.0), ("d", 0.0)])


def test_zscore_fusion_by_hand():
    # A: mean 6, population std sqrt(32/3) → a +sqrt(3/2), b 0, c -sqrt(3/2); B: mean 2, std 1 → b +1, d -1
    z = math.sqrt(1.5)
    _close(
        score_fusion([A, B], method="zscore"),
        [("b", 1.0), ("a", z - 1.0), ("c", -z - 1.0), ("d", -z - 1.0)],
    )


def test_normalise_edge_cases():
    assert normalise([], "minmax") == []
    assert normalise([3.0, 3.0], "minmax") == [1.0, 1.0]
    assert normalise([3.0, 3.0], "zscore") == [0.0, 0.0]
    assert normalise([4.0, 2.0, 0.0], "minmax") == [1.0, 0.5, 0.0]


def test_fuse_dispatch_and_errors():
    assert fuse([A, B], method="rrf", k=1) == rrf([A, B], k=1)
    assert fuse([A, B], [1, 3], method="zscore") == score_fusion([A, B], [1, 3], method="zscore")
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse([A], method="combmnz")
    with pytest.raises(ValueError, match="2 weights for 1"):
        rrf([A], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        score_fusion([A, B], [1.0, -1.0])
    with pytest.raises(ValueError, match="k"):
        rrf([A], k=-1)
    assert rrf([]) == [] and score_fusion([[], []]) == []


def _score_fusion_by_definition(rankings, weights, method):
    """Σ_i w_i · norm_i(d) summed with ``sum`` in the rankings' order, sorted by (-score, doc_id)."""
    normed, floors = [], []
    for ranking in rankings:
        values = normalise([s for _, s in ranking], method)
        normed.append(dict(zip([d for d, _ in ranking], values, strict=True)))
        floors.append(min(values) if values else 0.0)
    ids = {d for ranking in rankings for d, _ in ranking}
    fused = {d: sum(w * n.get(d, f) for n, f, w in zip(normed, floors, weights, strict=True)) for d in ids}
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


@pytest.mark.parametrize("method", ["minmax", "zscore"])
def test_score_fusion_is_the_definition_to_the_bit(method):
    """Seeded random rankings (overlapping ids, tied scores, one empty ranking, three weights): the same
    documents, order and float scores as the formula summed per document with ``sum``."""
    import random

    rng = random.Random(7)
    for _ in range(50):
        rankings = []
        for size in (rng.randint(0, 40), rng.randint(1, 40), rng.randint(1, 40)):
            ids = rng.sample([f"d{i:03d}" for i in range(60)], size)
            scores = sorted((round(rng.uniform(-3, 3), 1) for _ in ids), reverse=True)
            rankings.append(list(zip(ids, scores, strict=True)))
        weights = [rng.choice([0.0, 0.5, 1.0, 2.0, 0.3]) for _ in rankings]
        assert score_fusion(rankings, weights, method=method) == _score_fusion_by_definition(rankings, weights, method)
