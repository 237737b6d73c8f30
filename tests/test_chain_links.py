"""The chain's links (teacher → assistant → student) scored against human grades: thresholds from a grade mix,
the teacher-to-grades rule, the assistant fitted on a teacher's grades and the agreement of a tiny fixture,
all checked against values worked out by hand."""

import numpy as np
import pytest

from tests.helpers import need

need("sklearn", "bench")

from twostage_search.benchmarks.chain_links import (
    agreement_row,
    cosines,
    dense_scores,
    fit_assistant,
    mix_thresholds,
    teacher_grades,
)
from twostage_search.engine.errors import InputError
from twostage_search.rerankers.ordinal import OrdinalModel

SCALE = (1, 2, 3, 4)


def test_mix_thresholds_are_the_score_quantiles_at_the_mix_proportions():
    # mix counts 2, 3, 1, 2 of 8 → cumulative 0.25, 0.625, 0.75; scores 1..8 → 1 + 7·q (linear quantiles)
    cuts = mix_thresholds([8, 1, 7, 2, 6, 3, 5, 4], [1, 1, 2, 2, 2, 3, 4, 4], SCALE)
    assert cuts == pytest.approx([2.75, 5.375, 6.25])
    with pytest.raises(InputError):
        mix_thresholds([1.0], [], SCALE)


def test_teacher_grades_keep_hard_grades_only_when_every_grade_occurs():
    full = teacher_grades([0.0] * 4, [4, 3, 2, 1], [1, 2, 3, 4], SCALE)
    assert full.grades == [4, 3, 2, 1] and full.thresholds is None
    # an LLM that says L3 to everything: its E[L] is cut at the quartiles of scores 1..8 (mix 1:1:1:1)
    constant = teacher_grades([1, 2, 3, 4, 5, 6, 7, 8], [3] * 8, [1, 2, 3, 4], SCALE)
    assert constant.thresholds == pytest.approx([2.75, 4.5, 6.25])
    assert constant.grades == [1, 1, 2, 2, 3, 3, 4, 4]


def test_agreement_row_matches_a_hand_computed_kappa():
    row = agreement_row([1, 2, 3, 4], [1, 2, 4, 4], SCALE, 3, link="student")
    assert row["link"] == "student" and "confusion" not in row
    assert row["acc@4"] == 0.75 and row["acc@2"] == 1.0
    # quadratic weights (i−j)²/9: observed Σw·O = 1/36, chance Σw·E = 1/3 → κ = 1 − 1/12
    assert row["kappa_quadratic"] == pytest.approx(11 / 12)
    assert row["label_counts"] == {"1": 1, "2": 1, "3": 0, "4": 2}


def test_cosines_are_row_wise_inner_products():
    q = np.array([[1.0, 0.0], [0.6, 0.8]])
    d = np.array([[0.6, 0.8], [0.6, 0.8]])
    assert cosines(q, d) == pytest.approx([0.6, 1.0])
    with pytest.raises(InputError):
        cosines(q, d[:1])


def test_an_assistant_fitted_on_a_teachers_grades_orders_pairs_as_the_teacher_does(tmp_path):
    need("statsmodels", "train")
    # the teacher's grade rises with feature x, one pair in four off by a grade: a noisy but ordered teacher
    xs = [i / 10 for i in range(40)]
    grades = [min(4, max(1, 1 + int(x) + (1 if i % 4 == 0 else 0) - (1 if i % 4 == 2 and x >= 1 else 0)))
              for i, x in enumerate(xs)]  # fmt: skip
    assert set(grades) == set(SCALE)
    rows = [{"x": x, "q": 2.0} for x in xs]  # q: a query-level feature, constant on a one-query sample
    dev = [{"x": x, "q": 1.0 + x} for x in (0.5, 1.5, 2.5, 3.5)]
    model = fit_assistant(("x", "q"), rows, grades, dev, [1, 2, 3, 4], SCALE, {"teacher": "toy"})
    assert model.coef[1] == 0.0 and model.coef[0] > 0  # the constant feature gets no weight
    expected = model.expected(model.matrix(rows))
    assert np.all(np.diff(expected) > 0)  # E[grade] rises with x, as the teacher's grades do
    assert len(model.grade_cuts) == 3 and model.meta == {"teacher": "toy"}
    assert model.grade(model.matrix(dev)) == [1, 2, 3, 4]  # dev thresholds give the dev mix back
    model.save(tmp_path / "model.json")
    again = OrdinalModel.load(tmp_path / "model.json")
    assert np.array_equal(again.probabilities(again.matrix(rows)), model.probabilities(model.matrix(rows)))


def test_the_students_pair_scores_are_the_cosines_its_dense_index_ranks_by(tmp_path, tiny_docs, tiny_queries):
    """The chain's student link on real models: a pair's score read from a ``dense-flat`` index's stored vectors
    (all-MiniLM-L6-v2) is the cosine of the separately encoded query and document, and grades follow from it."""
    need("sentence_transformers", "rerank")
    from twostage_search.benchmarks.graded import GradedPair
    from twostage_search.engine.dense import create_dense_encoder
    from twostage_search.indexes.dense import DenseFlatIndex

    encoder = create_dense_encoder("sentence-transformers", model="bundled:minilm-l6", max_length=32)
    docs = tiny_docs[:4]
    index = DenseFlatIndex.build(docs, tmp_path / "index", encoder=encoder, progress=False)
    queries = {q.query_id: q for q in tiny_queries[:2]}
    corpus = {d.doc_id: d for d in docs}
    pairs = [GradedPair(q, d.doc_id, 1) for q in queries for d in docs[:3]]
    scores = dense_scores(index, encoder, queries, pairs)
    qv = encoder.encode_queries([queries[p.query_id].text for p in pairs])
    dv = encoder.encode_docs([corpus[p.doc_id].full_text for p in pairs])
    assert scores == pytest.approx(cosines(qv, dv), abs=1e-4)
    assert all(-1.0 <= s <= 1.0 for s in scores) and len(set(scores)) == len(scores)
