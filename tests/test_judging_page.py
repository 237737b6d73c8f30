"""The judging page over HTTP (TestClient): the judge token, login cookie, side by side, escaping, the
queue from a query set, grades, skip/later and the exports."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.helpers import need

need("fastapi", "service")
need("jinja2", "service")
need("python_multipart", "service")

from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.service_helpers import TOKEN, identity_arms, small_app, write_experiment
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.service.app import create_app
from twostage_search.service.judging.pairs import query_key
from twostage_search.service.settings import Settings

JUDGE_TOKEN = "judge-token-1"
XSS = "<img src=x onerror=\"document.title='pwned'\"><script>window.pwned=1</script>"
DOCS = {
    "d1": ("Tides", "The Moon causes the ocean tides."),
    "d2": ("Danger <b>bold</b>", XSS),
    "d3": ("Sun", "The Sun also pulls on the oceans."),
}


class ListRetriever:
    """Every query gets d1, d2, d3 (scores 3, 2, 1), with texts; texts can be fetched by id."""

    def retrieve(self, query: Query, k: int, *, texts: bool = True) -> RankedList:
        cands = [Candidate(d, 3.0 - i, DOCS[d][1], DOCS[d][0]) for i, d in enumerate(DOCS)]
        return RankedList.from_candidates(query.query_id, cands, k)

    def with_texts(self, ranking: RankedList) -> RankedList:
        cands = [Candidate(i.doc_id, i.score, DOCS[i.doc_id][1], DOCS[i.doc_id][0]) for i in ranking]
        return RankedList.from_candidates(ranking.query_id, cands)


class ReverseReranker:
    """Serves the candidates in reverse order (an arm that disagrees with the first stage)."""

    def rerank(self, query: Query, candidates):
        cands = [Candidate(c.doc_id, float(i), c.text, c.title) for i, c in enumerate(candidates)]
        return RankedList.from_candidates(query.query_id, cands)


def factory(config):
    return ReverseReranker() if config.params.get("reverse") else config.build()


@pytest.fixture
def client(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "s1", "text": "ocean tides"}\n')
    arms = identity_arms("wide", "flip")
    arms[1]["reranker"] = {"name": "identity", "params": {"reverse": True}}
    exp = write_experiment(tmp_path / "exp.yaml", "judging", arms)
    settings = Settings(
        index=tmp_path / "unused",
        experiment=exp,
        admin_token=TOKEN,
        judge_token=JUDGE_TOKEN,
        judge_queries=queries,
        data_dir=tmp_path / "d",
    )
    app = create_app(settings, retriever=ListRetriever(), reranker_factory=factory)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def bearer(name: str = "bob") -> dict[str, str]:
    return {"Authorization": f"Bearer {JUDGE_TOKEN}", "X-Judge-Name": name}


def test_tokens_are_distinct_and_required(tmp_path, client):
    with pytest.raises(ValidationError, match="judge_token must differ"):
        Settings(admin_token=TOKEN, judge_token=TOKEN)
    (tmp_path / "off").mkdir()
    with small_app(tmp_path / "off", ListRetriever(), data_dir=tmp_path / "off") as off:
        assert off.get("/judge").json()["error"] == "judging_disabled"
    page = client.get("/judge")  # not logged in: the login form
    assert page.status_code == 200 and 'id="login"' in page.text
    grade = {"query": "x", "doc_id": "d1", "grade": 2}
    assert client.post("/judge/grades", json=grade).status_code == 401
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/judge/grades", json=grade, headers=admin).status_code == 401
    wrong = client.post("/judge/login", data={"token": TOKEN, "name": "ann"}, follow_redirects=False)
    assert wrong.status_code == 401 and "wrong judge token" in wrong.text
    assert "/judge" not in client.get("/openapi.json").json()["paths"]


def test_login_side_by_side_escaped_and_graded(client):
    resp = client.post("/judge/login", data={"token": JUDGE_TOKEN, "name": "ann"}, follow_redirects=False)
    assert resp.status_code == 303 and "httponly" in resp.headers["set-cookie"].lower()
    page = client.get("/judge", params={"q": "ocean tides", "a": "wide", "b": "flip", "k": 3})
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "<img src=x" not in html and "<script>window" not in html and "<b>bold</b>" not in html
    assert "&lt;img src=x onerror=&#34;document.title=&#39;pwned&#39;&#34;&gt;" in html
    assert "Danger &lt;b&gt;bold&lt;/b&gt;" in html
    # wide: d1 d2 d3, flip: d3 d2 d1 → Jaccard 1; X1 = 0, X2 = 1, X3 = 3:
    # RBO_ext = (0.1/0.9)·(0 + 1/2·0.81 + 3/3·0.729) + 3/3·0.729 = 0.126 + 0.729 = 0.855
    assert re.search(r'id="jaccard">1\.000<', html) and re.search(r'id="rbo">0\.855<', html)
    assert html.count('class="hit"') == 6 and ">new<" not in html
    assert html.count(">▲2<") == 2 and html.count(">▼2<") == 2 and html.count(">=<") == 2
    qid = query_key("ocean tides")
    stored = client.post("/judge/grades", json={"query": "ocean tides", "doc_id": "d2", "grade": 0})
    assert stored.json() == {"stored": 1, "judge": "ann"}
    assert client.get("/judge", params={"q": "ocean tides"}).text.count('class="grade chosen" data-grade="0"') == 2
    bob = client.post("/judge/grades", json={"query": "ocean tides", "doc_id": "d2", "grade": 3}, headers=bearer())
    assert bob.json() == {"stored": 1, "judge": "bob"}
    bad = client.post("/judge/grades", json={"query": "ocean tides", "doc_id": "d2", "grade": 4})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    # two people: 0 and 3 → the lower middle grade, 0
    assert client.get("/judge/export", params={"format": "trec"}).text == f"{qid} 0 d2 0\n"
    assert client.get("/judge/export", params={"format": "csv"}).text == "query,docid,rating\nocean tides,d2,0\n"
    assert json.loads(client.get("/judge/export", params={"format": "queries"}).text) == {
        "_id": qid,
        "text": "ocean tides",
    }
    assert client.get("/judge/export", params={"source": "people"}).status_code == 422


def test_queue_from_a_query_set(client):
    client.post("/judge/login", data={"token": JUDGE_TOKEN, "name": "ann"})
    page = client.get("/judge/queue", params={"source": "queries"}).text
    assert 'id="queue-query">ocean tides<' in page and 'data-doc-id="d1"' in page
    assert "The Moon causes the ocean tides." in page
    # pooled from both arms: wide d1 d2 d3, flip d3 d2 d1 → d1 and d3 at rank 1, d2 at rank 2
    client.post("/judge/grades", json={"query": "ocean tides", "query_id": "s1", "doc_id": "d1", "grade": 3})
    assert 'data-doc-id="d3"' in client.get("/judge/queue", params={"source": "queries"}).text
    client.post("/judge/defer", json={"query": "ocean tides", "query_id": "s1", "doc_id": "d3", "state": "later"})
    assert 'data-doc-id="d2"' in client.get("/judge/queue", params={"source": "queries"}).text
    client.post("/judge/defer", json={"query": "ocean tides", "query_id": "s1", "doc_id": "d2", "state": "skip"})
    assert 'data-doc-id="d3"' in client.get("/judge/queue", params={"source": "queries"}).text  # later: last
    client.post("/judge/grades", json={"query": "ocean tides", "query_id": "s1", "doc_id": "d3", "grade": 1})
    assert 'id="queue-empty"' in client.get("/judge/queue", params={"source": "queries"}).text
    assert client.get("/judge/export").text == "s1 0 d1 3\ns1 0 d3 1\n"
    assert client.get("/judge/static/judge.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/judge/static/other.js").status_code == 404


def test_queue_from_the_log(client):
    client.post("/judge/login", data={"token": JUDGE_TOKEN, "name": "ann"})
    body = {"query": "Moon and tides", "arm": "flip", "k": 2}
    assert client.post("/search", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    log = client.app.state.service.log.store
    for _ in range(200):  # the writer thread commits the query record shortly after the answer
        if list(log.queries()):
            break
        time.sleep(0.05)
    page = client.get("/judge/queue", params={"source": "log"}).text  # flip served d3, d2: d3 at rank 1
    assert 'id="queue-query">Moon and tides<' in page and 'data-doc-id="d3"' in page
    client.post("/judge/grades", json={"query": "moon AND tides", "doc_id": "d3", "grade": 2})  # same query
    assert 'data-doc-id="d2"' in client.get("/judge/queue", params={"source": "log"}).text
