import math

import pytest

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Document, Query, RankedList, ScoredDoc, SparseVector


def test_ranked_list_sorts_by_score_then_doc_id_and_ranks_from_one():
    ranking = RankedList.from_candidates(
        "q", [Candidate("b", 1.0), Candidate("c", 3.0), Candidate("a", 1.0), Candidate("d", 2.0)]
    )
    assert ranking.doc_ids == ["c", "d", "a", "b"]
    assert [h.rank for h in ranking] == [1, 2, 3, 4]
    assert all(h.query_id == "q" for h in ranking)


def test_ranked_list_cutoff_and_head():
    ranking = RankedList.from_candidates("q", [Candidate(str(i), float(i)) for i in range(5)], k=3)
    assert ranking.doc_ids == ["4", "3", "2"]
    assert ranking.head(1).doc_ids == ["4"]
    assert ranking.head(10).doc_ids == ["4", "3", "2"]
    assert len(RankedList.from_candidates("q", [], k=3)) == 0


def test_from_scores_keeps_text_and_rescores():
    cands = [Candidate("a", 9.0, "ta", "Ta"), Candidate("b", 1.0, "tb")]
    ranking = RankedList.from_scores("q", cands, [0.1, 0.2])
    assert ranking.doc_ids == ["b", "a"]
    assert ranking[1].text == "ta" and ranking[1].title == "Ta" and ranking[1].score == 0.1
    with pytest.raises(ValueError):
        RankedList.from_scores("q", cands, [1.0])


@pytest.mark.parametrize(
    "items",
    [
        (ScoredDoc("q", "a", 1.0, 1), ScoredDoc("q", "b", 2.0, 2)),  # unsorted
        (ScoredDoc("q", "a", 2.0, 1), ScoredDoc("q", "b", 1.0, 3)),  # rank gap
        (ScoredDoc("q", "a", 2.0, 1), ScoredDoc("q", "a", 1.0, 2)),  # duplicate id
        (ScoredDoc("x", "a", 2.0, 1),),  # wrong query
        (ScoredDoc("q", "a", math.nan, 1),),  # NaN
    ],
)
def test_ranked_list_rejects_invalid_items(items):
    with pytest.raises(ValueError):
        RankedList("q", items)


def test_records_are_frozen():
    c = Candidate("a", 1.0)
    with pytest.raises(AttributeError):
        c.score = 2.0  # type: ignore[misc]


def test_built_rankings_hold_the_records_the_constructor_makes():
    """from_sorted and from_candidates write ScoredDoc's slots directly: the rows must be the constructor's."""
    docs = {"a": Document("a", "text a", "Title a"), "b": Document("b", "text b")}
    expected = (ScoredDoc("q", "a", 2.0, 1, "text a", "Title a"), ScoredDoc("q", "b", 1.0, 2, "text b", ""))
    built = [
        RankedList.from_sorted("q", [("a", 2), ("b", 1.0)], docs),
        RankedList.from_candidates("q", [Candidate("b", 1, "text b"), Candidate("a", 2.0, "text a", "Title a")]),
    ]
    for ranking in built:
        assert ranking.items == expected
        assert [repr(i) for i in ranking] == [repr(i) for i in expected]
        assert [hash(i) for i in ranking] == [hash(i) for i in expected]
        assert all(type(i.score) is float for i in ranking)  # an int score becomes a float, as before
        with pytest.raises(AttributeError):
            ranking[0].score = 3.0  # type: ignore[misc]
    assert RankedList.from_sorted("q", [("a", 2.0), ("c", 1.5)], docs).doc_ids == ["a"]  # c has no document


def test_query_must_not_be_empty():
    with pytest.raises(InputError):
        Query("q", "   ")


def test_document_full_text():
    assert Document("d", "body", "Title").full_text == "Title body"
    assert Document("d", "body").full_text == "body"


def test_sparse_vector_order_quantize_dot_top():
    v = SparseVector.from_dict({"b": 0.5, "a": 0.5, "c": 2.0, "z": 0.0, "y": 0.004})
    assert v.terms == ("c", "a", "b", "y")
    assert v.quantize(100) == {"c": 200, "a": 50, "b": 50}  # 0.4 rounds to 0 and is dropped
    assert v.top(2).terms == ("c", "a")
    assert v.top(None) is v
    w = SparseVector.from_dict({"c": 1.0, "b": 2.0, "q": 5.0})
    assert v.dot(w) == pytest.approx(2.0 * 1.0 + 0.5 * 2.0)
    assert w.dot(v) == pytest.approx(v.dot(w))


def test_sparse_vector_rejects_negative_and_duplicates():
    with pytest.raises(ValueError):
        SparseVector(("a",), (-1.0,))
    with pytest.raises(ValueError):
        SparseVector(("a", "a"), (1.0, 2.0))
