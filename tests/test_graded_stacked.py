"""The stacked graded model (``graded-stacked``): its features on hand-computed examples, BM25 among the
candidates against the formula, the trees' fit (the loss falls), save/reload with the same predictions, and the
registered reranker's judgements (grade, E[grade], P(grade) like the ``lore`` judge)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import need
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.stacked_features import (
    STACKED_FEATURES,
    extra_features,
    numbers,
    stem,
    tokens,
    trigrams,
)

need("lightgbm", "graded")
need("bm25s", "graded")


# ------------------------------------------------------------------------------------------ features
def test_words_stems_and_numbers():
    assert tokens("Red Running-Shoes, 10oz!") == ["red", "running", "shoes", "10oz"]
    assert [stem(w) for w in ("shoes", "glass", "gas", "running")] == ["shoe", "glas", "gas", "running"]
    # "32 GB" and "32gb" are the same number + unit; a bare number has no unit.
    assert numbers("iPhone 32 GB, 2 pack") == ({"32", "2"}, {"32gb", "2pack"})
    assert numbers("32gb card 1.5") == ({"32", "1.5"}, {"32gb"})
    assert trigrams(["ipod", "tv"]) == {"ipo", "pod", "tv"}


def test_extra_features_by_hand():
    item = Candidate("a", 0.0, "Weighs 10oz. Lightweight mesh.", "Nike Red Running Shoe")
    f = extra_features("red running shoes 10 oz", item)
    # query words {red, running, shoes, 10, oz}; title {nike, red, running, shoe}; description
    # {weighs, 10oz, lightweight, mesh}: no query word is a description word.
    assert f["desc_overlap"] == 0.0
    assert f["stem_overlap"] == pytest.approx(3 / 5)  # red, running, shoe(s)
    assert f["title_coverage"] == pytest.approx(2 / 4)  # red, running of the title's 4 words
    assert f["last_word"] == 0.0  # "oz" is not in the title
    assert f["text_phrase"] == 0.0
    # query trigrams: red, run, unn, nni, nin, ing, sho, hoe, oes, 10, oz (11); the title has all but oes, 10, oz
    assert f["char_overlap"] == pytest.approx(8 / 11)
    # the query's number 10 and its "10 oz" are both in the description's "10oz"
    assert (f["query_numbers"], f["numbers_found"], f["units_found"]) == (1.0, 1.0, 1.0)
    assert f["title_len"] == pytest.approx(math.log(5))
    assert f["desc_len"] == pytest.approx(math.log(5))

    g = extra_features("red running shoes", Candidate("b", 0.0, "", "Red Running Shoes for Men"))
    assert (g["desc_overlap"], g["stem_overlap"], g["title_coverage"]) == (0.0, 1.0, pytest.approx(3 / 5))
    assert (g["last_word"], g["text_phrase"]) == (1.0, 1.0)
    assert (g["query_numbers"], g["numbers_found"], g["units_found"], g["desc_len"]) == (0.0, 0.0, 0.0, 0.0)

    h = extra_features("tv 55 inch", Candidate("c", 0.0, "A 65 inch screen.", "Samsung TV"))
    assert (h["numbers_found"], h["units_found"]) == (0.0, 0.0)  # 55 ≠ 65


def test_bm25_among_the_candidates_by_hand():
    from twostage_search.rerankers.stacked_features import bm25_scores

    a = Candidate("a", 0.0, "", "red shoe")
    b = Candidate("b", 0.0, "shoe box", "blue shoe")
    # Two documents (the candidates), average length 3. Lucene's BM25 (k1 1.2, b 0.75):
    # idf(t) = ln(1 + (N − n + 0.5) / (n + 0.5)); term score = idf · tf / (tf + k1 · (1 − b + b · len / avglen)).
    idf_red, idf_shoe = math.log(1 + 1.5 / 1.5), math.log(1 + 0.5 / 2.5)
    norm_a, norm_b = 1.2 * (0.25 + 0.75 * 2 / 3), 1.2 * (0.25 + 0.75 * 4 / 3)
    want_a = idf_red / (1 + norm_a) + idf_shoe / (1 + norm_a)
    want_b = idf_shoe * 2 / (2 + norm_b)
    got = bm25_scores("Red shoe sandals", [a, b])  # "sandals" is in no candidate: adds nothing
    assert got == pytest.approx([want_a, want_b], rel=1e-6)
    assert bm25_scores("green", [a, b]) == [0.0, 0.0]
    assert bm25_scores("red", []) == []


def test_stacked_features_hold_every_feature():
    from twostage_search.rerankers.stacked_features import stacked_features

    items = [Candidate("a", 0.0, "", "red shoe"), Candidate("b", 0.0, "shoe box", "blue shoe")]
    signals = {"ce": [2.0, -1.0], "ce_text": [1.0, 3.0], "bge": [0.9, 0.7]}
    rows = stacked_features("red shoe", items, signals)
    assert [set(r) for r in rows] == [set(STACKED_FEATURES)] * 2
    assert [r["ce_gap"] for r in rows] == [0.0, -3.0]
    assert [r["ce_text_gap"] for r in rows] == [-2.0, 0.0]
    assert [r["ce_text_rank"] for r in rows] == [1.0, 0.0]
    assert [r["bge_rank"] for r in rows] == [0.0, 1.0]
    assert rows[0]["bm25_rank"] == 0.0 and rows[0]["bm25"] > rows[1]["bm25"]
    # query-level, the same for both: log(1 + 2 candidates); only "a" holds both query words (b lacks "red");
    # the ce logits 2 and −1 have mean 0.5 and population standard deviation 1.5
    for r in rows:
        assert (r["candidates"], r["all_words"], r["ce_spread"]) == (pytest.approx(math.log(3)), 0.5, 1.5)


def test_query_features_and_the_signals_a_model_reads():
    from twostage_search.rerankers.stacked_features import query_features, signals_read

    items = [
        Candidate("a", 0.0, "Tent pegs, 4 pack", "Camping tent"),
        Candidate("b", 0.0, "", "Tent"),
        Candidate("c", 0.0, "", "Stove"),
        Candidate("d", 0.0, "pegs", "Peg bag"),
    ]
    # "tent pegs": a (tent, pegs in its description) holds both words; b only tent; c none; d only pegs
    f = query_features("Tent pegs", items, [3.0, 1.0, -1.0, 1.0])
    # logits 3, 1, −1, 1: mean 1, squared deviations 4, 0, 4, 0, population variance 2
    assert f == {"candidates": pytest.approx(math.log(5)), "all_words": 0.25, "ce_spread": pytest.approx(math.sqrt(2))}
    assert "ce_spread" not in query_features("tent", items, None)
    assert query_features("tent", [], []) == {"candidates": 0.0, "all_words": 0.0, "ce_spread": 0.0}

    assert signals_read(("ce_text_gap", "title_len")) == ("ce_text",)
    assert signals_read(("ce_spread", "bge_z", "bm25")) == ("ce", "bge", "bm25")
    assert signals_read(("ce_gap", "ce_text")) == ("ce", "ce_text")
    assert signals_read(("phrase", "candidates")) == ()


# ------------------------------------------------------------------------------------------- the trees
def _toy(n_per_grade: int = 30) -> tuple[np.ndarray, list[int]]:
    """Grades 1–4 with a first feature that separates them (noisy) and a second that is noise."""
    rng = np.random.default_rng(0)
    grades = [g for g in (1, 2, 3, 4) for _ in range(n_per_grade)]
    x = np.column_stack([np.array(grades, dtype=float) + rng.normal(0, 0.6, len(grades)), rng.normal(size=len(grades))])
    return x, grades


def test_stacked_model_fits_and_reloads_with_the_same_predictions(tmp_path):
    from twostage_search.rerankers.stacked import StackedModel, fit_stacked

    x, grades = _toy()
    model = fit_stacked(("signal", "noise"), x, grades, (1, 2, 3, 4), rounds=30, params={"min_data_in_leaf": 5})
    p = model.probabilities(x)
    assert p.shape == (len(grades), 4)
    assert p.sum(axis=1) == pytest.approx(np.ones(len(grades)))
    # the loss falls: the fitted P(true grade) beats the grade shares (1/4 each) on the training pairs
    nll = -np.mean(np.log(p[np.arange(len(grades)), np.array(grades) - 1]))
    assert nll < math.log(4) - 0.3
    assert model.expected(np.array([[1.0, 0.0]]))[0] < model.expected(np.array([[4.0, 0.0]]))[0]

    cut = model.with_grade_cuts([1.5, 2.5, 3.5])
    path = tmp_path / "model.json"
    cut.save(path)
    again = StackedModel.load(path)
    assert again.features == ("signal", "noise") and again.grade_cuts == (1.5, 2.5, 3.5)
    assert np.array_equal(again.probabilities(x), cut.probabilities(x))
    assert again.grade(x) == cut.grade(x)
    # the first 10 rounds of the 30 are what fitting 10 rounds gives
    ten = fit_stacked(("signal", "noise"), x, grades, (1, 2, 3, 4), rounds=10, params={"min_data_in_leaf": 5})
    assert model.rounds == 30 and model.head(10).rounds == 10
    assert np.array_equal(model.head(10).probabilities(x), ten.probabilities(x))
    # the hard grade is E[grade] cut at the thresholds
    assert cut.grade(x) == [1 + int(np.searchsorted([1.5, 2.5, 3.5], e, side="right")) for e in cut.expected(x)]


def test_out_of_fold_predictions_never_see_their_own_query():
    from twostage_search.rerankers.stacked import out_of_fold

    x, grades = _toy(20)  # 80 rows, grades 1–4
    queries = [f"q{i % 8}" for i in range(80)]  # 8 queries of 10 rows, each with every grade
    setting = {"min_data_in_leaf": 5}
    first = out_of_fold(("signal", "noise"), x, grades, queries, (1, 2, 3, 4), setting, 20, folds=4)
    assert len(first) == 80 and all(1.0 <= e <= 4.0 for e in first)
    # Relabel q0's rows (its grades reversed): its own predictions stay exactly the same, since the trees that
    # predict them were fitted without q0; another fold's predictions do change.
    flipped = [5 - g if q == "q0" else g for g, q in zip(grades, queries, strict=True)]
    again = out_of_fold(("signal", "noise"), x, flipped, queries, (1, 2, 3, 4), setting, 20, folds=4)
    own = [i for i, q in enumerate(queries) if q == "q0"]
    assert [again[i] for i in own] == [first[i] for i in own]
    assert again != first


def test_stacked_model_refuses_bad_input(tmp_path):
    from twostage_search.rerankers.stacked import StackedModel, fit_stacked

    x, grades = _toy(5)
    with pytest.raises(InputError):
        fit_stacked(("a",), x, grades, (1, 2, 3, 4))  # two columns, one name
    with pytest.raises(InputError):
        fit_stacked(("a", "b"), x, grades, (1, 2, 3, 4, 5))  # grade 5 never occurs
    model = fit_stacked(("a", "b"), x, grades, (1, 2, 3, 4), rounds=2, params={"min_data_in_leaf": 2})
    with pytest.raises(InputError):
        model.with_grade_cuts([2.5, 1.5, 3.5])
    with pytest.raises(InputError):
        model.matrix([{"a": 1.0}])  # "b" missing
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "twostage-ordinal/1"}')
    with pytest.raises(InputError):
        StackedModel.load(bad)


# ------------------------------------------------------------------------------------------ the reranker
def test_graded_stacked_judges_like_lore(tmp_path):
    need("onnxruntime", "rerank")
    from twostage_search.engine.registry import rerankers
    from twostage_search.rerankers.graded_stacked import KNOWN, GradedStackedReranker
    from twostage_search.rerankers.stacked import fit_stacked

    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, len(KNOWN)))
    grades = [1 + i % 4 for i in range(80)]
    model = fit_stacked(KNOWN, x, grades, (1, 2, 3, 4), rounds=3, params={"min_data_in_leaf": 5})
    model.with_grade_cuts([1.5, 2.5, 3.5]).save(tmp_path / "model.json")
    assert rerankers.get("graded-stacked") is GradedStackedReranker

    judge = GradedStackedReranker(str(tmp_path), threads=1)
    query = Query("q1", "red running shoes")
    items = [
        Candidate("a", 3.0, "Lightweight mesh upper.", "Nike red running shoes"),
        Candidate("b", 2.0, "", "Blender 500W"),
        Candidate("c", 1.0, "Pack of 2.", "Running socks"),
    ]
    out = judge.judge(query, items)
    assert [j.doc_id for j in out] == ["a", "b", "c"]
    for j in out:
        assert j.label in (1, 2, 3, 4) and j.probs is not None and len(j.probs) == 4
        assert sum(j.probs) == pytest.approx(1.0)
        assert j.expected == pytest.approx(sum((i + 1) * p for i, p in enumerate(j.probs)))
        assert j.source == "graded-stacked"
    ranking = judge.rerank(query, items)
    assert sorted(ranking.doc_ids) == ["a", "b", "c"]
    assert judge.judge(query, []) == []
    again = GradedStackedReranker(str(tmp_path / "model.json"), threads=1).judge(query, items)
    assert [(j.label, j.probs) for j in again] == [(j.label, j.probs) for j in out]


# -------------------------------------------------------------------------------------- dev thresholds
@pytest.mark.parametrize(
    "scores",
    [
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],  # in grade order: every pair can get its grade
        [0.1, 0.5, 0.2, 0.4, 0.3, 0.8, 0.6, 0.7],
        [0.1, 0.2, 0.6, 0.3, 0.4, 0.5, 0.7, 0.8],
    ],
)
def test_kappa_thresholds_reach_the_best_cuts(scores):
    import itertools

    from twostage_search.benchmarks.graded import agreement, apply_thresholds, fit_thresholds, kappa_thresholds

    grades, scale = [1, 1, 1, 2, 2, 3, 3, 4], (1, 2, 3, 4)

    def kq(cuts):
        return agreement(grades, apply_thresholds(scores, cuts, scale), scale, 3)["kappa_quadratic"]

    # every way to put three cuts between (or around) the eight scores, tried one by one
    gaps = [0.05] + [v + 0.05 for v in sorted(scores)]
    best = max(kq(c) for c in itertools.combinations_with_replacement(gaps, 3))
    found = kappa_thresholds(scores, grades, scale)
    assert found == sorted(found)
    assert kq(found) == pytest.approx(best)
    assert kq(found) >= kq(fit_thresholds(scores, grades, scale))


def test_the_bundled_model_judges_and_ranks_the_matching_item_first():
    need("onnxruntime", "rerank")
    from twostage_search.rerankers.graded_stacked import KNOWN, GradedStackedReranker

    judge = GradedStackedReranker(threads=1)  # bundled:graded-stacked-crowdflower
    assert set(judge.model.features) <= set(KNOWN) and judge.grades == (1, 2, 3, 4)
    assert len(judge.model.grade_cuts) == 3
    query = Query("q1", "red running shoes")
    items = [
        Candidate("blender", 0.0, "A 500 W kitchen blender with a glass jar.", "Blender 500W"),
        Candidate("shoes", 0.0, "Lightweight mesh upper, rubber sole.", "Nike Red Running Shoes"),
    ]
    out = judge.judge(query, items)
    assert [len(j.probs or ()) for j in out] == [4, 4]
    assert out[1].expected > out[0].expected
    assert judge.rerank(query, items).doc_ids == ["shoes", "blender"]


def test_serving_features_equal_the_cached_ones_the_study_fits_on(tmp_path):
    """The study's rows (signals scored into its TSV caches, then read back) are what the reranker computes when
    it scores the same candidates itself, for every signal (``ce``, ``ce_text``, ``bge``)."""
    need("onnxruntime", "rerank")
    from twostage_search.benchmarks.graded import GradedSet
    from twostage_search.benchmarks.graded_data import fill, open_caches, stacked_rows
    from twostage_search.benchmarks.studies.graded_stacked import MODEL_SIGNALS
    from twostage_search.engine.types import Document
    from twostage_search.rerankers.graded import load_graded_model
    from twostage_search.rerankers.graded_stacked import KNOWN, GradedStackedReranker
    from twostage_search.rerankers.stacked import fit_stacked

    docs = {
        "a": Document("a", "Lightweight mesh upper, rubber sole.", "Nike Red Running Shoes"),
        "b": Document("b", "A 500 W kitchen blender.", "Blender 500W"),
        "c": Document("c", "", "Running socks, 2 pack"),
    }
    data = GradedSet(
        "toy", {"q1": Query("q1", "red running shoes")}, docs, {"q1": {"a": 4, "b": 1, "c": 2}}, (1, 2, 3, 4), 3
    )
    data.splits = {"test": ("q1",)}
    pairs = data.pairs("test")
    rng = np.random.default_rng(2)
    model = fit_stacked(
        KNOWN,
        rng.normal(size=(40, len(KNOWN))),
        [1 + i % 4 for i in range(40)],
        (1, 2, 3, 4),
        rounds=2,
        params={"min_data_in_leaf": 5},
    )
    judge = GradedStackedReranker(model, threads=1)
    assert judge.scorer.names == MODEL_SIGNALS

    caches = open_caches(tmp_path, "toy", MODEL_SIGNALS)
    fill(data, pairs, caches, judge.scorer)
    reread = open_caches(tmp_path, "toy", MODEL_SIGNALS)  # from the files, as a later run reads them
    cached = stacked_rows(data, pairs, reread, load_graded_model("bundled:graded-crowdflower"))  # the judge's default
    items = [Candidate(d, 0.0, docs[d].text, docs[d].title) for d in ("a", "b", "c")]
    serving = judge.features(data.queries["q1"], items, judge.signals(data.queries["q1"], items)[0])
    assert serving == cached
    # and without precomputed signals the reranker scores them itself
    assert judge.features(data.queries["q1"], items, {}) == cached
