"""The graded relevance model: the committed query splits, the ordinal model on hand-computed examples,
its fit (the loss falls), save/reload, and the registered ``graded`` reranker's judgements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import need
from twostage_search.benchmarks.graded_data import SPLITS_DIR, read_splits, write_splits
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.graded import pair_features, passage_text
from twostage_search.rerankers.ordinal import OrdinalModel


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize(
    ("name", "sizes"),
    [("crowdflower-search-relevance", (157, 52, 52)), ("homedepot-search-relevance", (7077, 2359, 2359))],
)
def test_committed_splits_are_disjoint_and_reproducible(tmp_path, name, sizes):
    path = SPLITS_DIR / f"{name}.tsv"
    splits = read_splits(path)  # raises on a query listed twice
    train, dev, test = (set(splits[s]) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == sizes
    assert not (train & dev) and not (train & test) and not (dev & test)
    again = tmp_path / "again.tsv"
    write_splits(sorted(train | dev | test), again)  # the seeded 60/20/20 split of the same ids
    assert again.read_text() == path.read_text()


def test_a_split_file_listing_a_query_twice_is_rejected(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tsplit\nq1\ttrain\nq1\ttest\n")
    with pytest.raises(InputError):
        read_splits(bad)


# ------------------------------------------------------------------------------------- ordinal model
def test_ordinal_model_probabilities_by_hand():
    # One feature, unstandardised (mean 0, scale 1), β = 1, θ = (−1, 0, 1).
    model = OrdinalModel(("ce",), (0.0,), (1.0,), (1.0,), (-1.0, 0.0, 1.0), (1, 2, 3, 4))
    p = model.probabilities(np.array([[0.0], [2.0]]))
    # x = 0: P(≤1) = σ(−1), P(≤2) = σ(0) = 1/2, P(≤3) = σ(1).
    a, b = _sigmoid(-1), _sigmoid(1)
    assert p[0].tolist() == pytest.approx([a, 0.5 - a, b - 0.5, 1 - b])
    assert model.expected(np.array([[0.0]]))[0] == pytest.approx(2.5)  # symmetric around 2.5
    # x = 2: P(≤k) = σ(θ_k − 2) = σ(−3), σ(−2), σ(−1).
    c = [_sigmoid(-3), _sigmoid(-2), _sigmoid(-1)]
    by_hand = [c[0], c[1] - c[0], c[2] - c[1], 1 - c[2]]
    assert p[1].tolist() == pytest.approx(by_hand)
    assert model.expected(np.array([[2.0]]))[0] == pytest.approx(sum((i + 1) * q for i, q in enumerate(by_hand)))
    assert p.sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert model.grade(np.array([[-5.0], [5.0]])) == [1, 4]  # most probable grade
    wide = OrdinalModel(("ce",), (0.0,), (1.0,), (1.0,), (-3.0, 0.0, 3.0), (1, 2, 3, 4))
    # x = 1.5: P = σ(−4.5), σ(−1.5) − σ(−4.5), σ(1.5) − σ(−1.5) ≈ 0.64, 1 − σ(1.5): grade 3 is the mode.
    assert wide.grade(np.array([[1.5]])) == [3]
    cut = model.with_grade_cuts([1.5, 2.5, 3.5])  # E[grade] cut: 2.5 exactly is grade 3
    assert cut.grade(np.array([[0.0]])) == [3]


def test_ordinal_model_rejects_cuts_out_of_order():
    with pytest.raises(InputError):
        OrdinalModel(("ce",), (0.0,), (1.0,), (1.0,), (0.0, -1.0, 1.0), (1, 2, 3, 4))


def test_ordinal_model_save_and_load_round_trip(tmp_path):
    model = OrdinalModel(
        ("ce", "ce_gap"),
        (1.0, -2.0),
        (2.0, 3.0),
        (0.7, -0.1),
        (-1.0, 0.5, 2.0),
        (1, 2, 3, 4),
        (1.6, 2.7, 3.4),
        {"x": 1},
    )
    model.save(tmp_path / "m.json")
    assert OrdinalModel.load(tmp_path / "m.json") == model
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError):
        OrdinalModel.load(tmp_path / "bad.json")


def test_fit_on_a_tiny_slice_lowers_the_loss():
    need("statsmodels", "train")
    from twostage_search.rerankers.ordinal import fit_ordinal, null_model

    x = np.array([[v] for v in (0.0, 1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 5.0, 5.5, 6.0, 7.0, 8.0)])
    grades = [1, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 4]
    fitted = fit_ordinal(("ce",), x, grades, (1, 2, 3, 4))
    start = null_model(("ce",), x, grades, (1, 2, 3, 4))
    assert fitted.nll(x, grades) < start.nll(x, grades) - 0.3
    assert fitted.coef[0] > 0  # higher feature, higher grade
    assert list(fitted.cuts) == sorted(fitted.cuts)
    with pytest.raises(InputError):
        fit_ordinal(("ce",), x, [1] * 12, (1, 2, 3, 4))  # grades never seen


def test_training_on_a_tiny_slice_picks_a_feature_set_on_dev_and_reloads_the_same(tmp_path):
    need("statsmodels", "train")
    need("sklearn", "bench")
    from twostage_search.benchmarks.studies.graded_model import feature_sets, train

    # Grades rise with the logit; the lexical and match features are noise here.
    logit = [0.0, 1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 5.0, 5.5, 6.0, 7.0, 8.0]
    grades = [1, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 4]
    cands = [Candidate(f"d{i}", 0.0, "", "red shoes" if i % 2 else "blue hat") for i in range(12)]
    rows = pair_features("red shoes", cands, {"ce": logit})
    extra_rows = pair_features("red shoes", cands[:4], {"ce": [-2.0, 9.0, -1.0, 8.0]})
    sets = {k: v for k, v in feature_sets(("ce",)).items() if k in ("ce", "ce+relative")}
    model, trials = train(rows, grades, rows, grades, (1, 2, 3, 4), 3, sets, ("extra", extra_rows, [1, 4, 1, 4]))
    assert {(t["features"], t["data"]) for t in trials} == {(s, d) for s in sets for d in ("train", "train + extra")}
    assert all(t["train_nll"] < t["null_nll"] for t in trials)  # every fit lowers the loss
    best = max(trials, key=lambda t: t["dev_kappa_quadratic"])
    assert model.meta == {"feature_set": best["features"], "data": best["data"]}
    model.save(tmp_path / "model.json")
    again = OrdinalModel.load(tmp_path / "model.json")
    x = again.matrix(rows)
    assert again.probabilities(x).tolist() == model.probabilities(model.matrix(rows)).tolist()
    assert again.grade(x) == model.grade(x)


# ------------------------------------------------------------------------------------------ features
def test_each_logit_reads_its_own_passage():
    item = Candidate("d1", 0.0, "Soft cotton, machine washable.", "Red running shirt")
    assert passage_text(item, "ce") == "Red running shirt"
    # title and description joined as the cross-encoder joins them (title first, one space)
    assert passage_text(item, "ce_text") == "Red running shirt Soft cotton, machine washable."
    bare = Candidate("d2", 0.0, "Blue mug", "")
    assert passage_text(bare, "ce") == passage_text(bare, "ce_text") == "Blue mug"


def test_pair_features_by_hand():
    cands = [Candidate("a", 0.0, "", "Red Running Shoes"), Candidate("b", 0.0, "red wool", "Blue hat")]
    rows = pair_features("red shoes", cands, {"ce": [2.0, -1.0], "ce_text": [-4.0, 0.0]})
    assert [r["ce"] for r in rows] == [2.0, -1.0]
    assert [r["ce_gap"] for r in rows] == [0.0, -3.0]
    assert [r["ce_rank"] for r in rows] == [0.0, 1.0]
    assert [r["ce_mean"] for r in rows] == [0.5, 0.5]
    assert [r["ce_z"] for r in rows] == [1.0, -1.0]  # (2 − 0.5) / 1.5, population sd of (2, −1) is 1.5
    assert [r["ce_text_z"] for r in rows] == [-1.0, 1.0]
    assert [(r["ce_text_gap"], r["ce_text_rank"], r["ce_text_mean"]) for r in rows] == [
        (-4.0, 1.0, -2.0),
        (0.0, 0.0, -2.0),
    ]
    assert [r["title_overlap"] for r in rows] == [1.0, 0.0]
    assert [r["text_overlap"] for r in rows] == [1.0, 0.5]  # "red" in b's description
    assert rows[0]["query_terms"] == pytest.approx(math.log(3))
    assert [r["title_terms"] for r in rows] == pytest.approx([math.log(4), math.log(3)])
    assert [r["title_all"] for r in rows] == [1.0, 0.0]
    assert [r["phrase"] for r in rows] == [0.0, 0.0]  # "red running shoes": the words are not side by side
    with pytest.raises(InputError):
        pair_features("q", cands, {"ce": [1.0]})


def test_match_features_and_a_flat_logit_by_hand():
    cands = [
        Candidate("a", 0.0, "", "Red shoes, size 9"),
        Candidate("b", 0.0, "", "Shoes red"),
        Candidate("c", 0.0, "", "Red hat"),
    ]
    rows = pair_features("Red Shoes", cands, {"ce": [1.0, 1.0, 1.0]})
    assert [r["phrase"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["title_all"] for r in rows] == [1.0, 1.0, 0.0]
    assert [r["title_overlap"] for r in rows] == [1.0, 1.0, 0.5]
    assert [r["ce_z"] for r in rows] == [0.0, 0.0, 0.0]  # all alike: z is 0, not a division by zero


# ----------------------------------------------------------------------------------- the reranker
@pytest.mark.slow
def test_graded_reranker_judges_like_lore_and_reloads_the_same(tmp_path):
    need("onnxruntime", "rerank")
    from twostage_search.rerankers.graded import GradedReranker, load_graded_model

    bundled = load_graded_model("bundled:graded-crowdflower")
    reranker = GradedReranker()
    query = Query("q1", "red running shoes")
    cands = [
        Candidate("a", 0.0, "", "Nike red running shoes for men"),
        Candidate("b", 0.0, "A kitchen blender.", "Blender 500W"),
        Candidate("c", 0.0, "", "Blue running shoes"),
    ]
    judgements = reranker.judge(query, cands)
    assert [j.doc_id for j in judgements] == ["a", "b", "c"]
    for j in judgements:
        assert j.label in (1, 2, 3, 4) and j.probs is not None
        assert sum(j.probs) == pytest.approx(1.0)
        assert j.expected == pytest.approx(sum((i + 1) * p for i, p in enumerate(j.probs)))
    assert judgements[0].expected > judgements[1].expected  # the shoes above the blender
    ranking = reranker.rerank(query, cands)
    assert ranking.doc_ids[0] == "a" and ranking.doc_ids[-1] == "b"
    bundled.save(tmp_path / "model.json")
    again = GradedReranker(str(tmp_path))
    assert again.rerank(query, cands) == ranking  # identical scores after save and reload


def test_fine_tuned_grader_inputs_and_report_tables():
    from pathlib import Path

    from twostage_search.benchmarks.studies.graded_ce_inputs import budget, grader_tables, states_path

    assert (budget("ce"), budget("ce_text")) == (64, 128)
    # the title model's cache names are the ones earlier runs wrote; other passages are named apart
    assert states_path(Path("v"), "crowdflower", "dev", "ce", 8) == Path("v/states-crowdflower-dev-len64-frozen8.npz")
    assert (
        states_path(Path("v"), "homedepot", "test", "ce_text", 8).name
        == "states-homedepot-test-ce_text-len128-frozen8.npz"
    )
    row = {"grader": "g", "acc@4": 0.5, "acc@2": 0.75, "macro_f1@4": 0.25, "kappa_linear": 0.1, "kappa_quadratic": 0.2}
    ci = {"diff": 0.05, "low": -0.01, "high": 0.125}
    report = {
        "crowdflower": {
            "test_pairs": 4,
            "test_queries": 2,
            "rows": [row],
            "kappa_quadratic_diff_vs_zero_shot": ci,
            "kappa_quadratic_diff_vs_compare": {"compare": "bundled:x"} | ci,
        }
    }
    lines = grader_tables(report)  # no Home Depot part: left out
    assert lines[0] == "\ncrowdflower test (4 pairs, 2 queries)"
    assert "| g | 0.500 | 0.750 | 0.250 | 0.100 | 0.200 |" in lines
    assert lines[-2:] == [
        "Δ κ quadratic (fine-tuned − zero-shot): +0.050 [-0.010, +0.125]",
        "Δ κ quadratic (fine-tuned − bundled:x served): +0.050 [-0.010, +0.125]",
    ]
