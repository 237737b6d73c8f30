import gzip

import pytest

from tests.helpers import TINY
from twostage_search.engine.beir import count_docs, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError


def test_reads_tiny_fixture():
    docs = list(read_corpus(TINY / "corpus.jsonl"))
    assert len(docs) == 12
    assert docs[0].doc_id == "d01" and docs[0].title == "Paris"
    assert [q.query_id for q in read_queries(TINY / "queries.jsonl")] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert read_qrels(TINY / "qrels" / "test.tsv")["q1"] == {"d01": 1}


def test_reads_gzip(tmp_path):
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"_id": 7, "text": "seven"}\n\n{"_id": "8", "title": "T", "text": "eight"}\n')
    docs = list(read_corpus(path))
    assert [(d.doc_id, d.title, d.text) for d in docs] == [("7", "", "seven"), ("8", "T", "eight")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', ":2: not valid JSON"),
        ('{"_id": "a"}\n', "missing field 'text'"),
        ('{"text": "x"}\n', "missing field '_id'"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', "duplicate '_id'"),
        ('["a", "b"]\n', "expected a JSON object"),
        ('{"_id": "a", "text": 3}\n', "must be a string"),
    ],
)
def test_malformed_corpus_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        count_docs(path)


def test_missing_file_and_bad_qrels(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        count_docs(tmp_path / "nope.jsonl")
    bad = tmp_path / "q.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(InputError, match=":2: relevance"):
        read_qrels(bad)
    empty_query = tmp_path / "queries.jsonl"
    empty_query.write_text('{"_id": "q", "text": "  "}\n')
    with pytest.raises(InputError, match="empty query"):
        list(read_queries(empty_query))
