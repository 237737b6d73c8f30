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
