"""The ``opensearch`` backend under faults, through :class:`~tests.opensearch_proxy.FaultProxy` and real
unreachable ports: ingest resumed after the server went down, back-off on outages and rejections, clear
errors, and no credentials in logs or ``meta.json``.

Fault cases go through :class:`FaultProxy`, a real HTTP proxy on 127.0.0.1 in front of the cluster that
answers chosen bulk requests with 429/503 or drops every connection for a while (a server that is down).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import time

import pytest

from tests.helpers import TINY, need
from twostage_search.cli import main
from twostage_search.engine.types import Query

need("opensearchpy", "opensearch")
need("pydantic_settings", "opensearch")

from twostage_search.indexes.opensearch import (
    OpenSearchError,
    OpenSearchIndex,
    OpenSearchIndexMissingError,
    OpenSearchUnavailableError,
    resolve_settings,
)
from twostage_search.indexes.opensearch.ingest import all_ids, bulk_index

# Fast back-off for the fault tests (the defaults wait up to 30 s between retries).
FAST = {"retry_backoff": 0.02, "max_backoff": 0.1}


from tests.opensearch_proxy import FaultProxy


@pytest.fixture
def proxy(opensearch_url):
    p = FaultProxy(opensearch_url)
    yield p
    p.close()


def _build(docs, path, encoder, url, alias, **kw):
    return OpenSearchIndex.build(docs, path, encoder=encoder, progress=False, hosts=[url], index_name=alias, **kw)


# ----------------------------------------------------------------------------------- fault cases
def test_server_down_mid_ingest_then_resume_without_loss_or_duplicates(
    tmp_path, encoder, tiny_docs, lucene_retriever, tiny_queries, proxy, name
):
    path, alias = tmp_path / "idx", name()
    proxy.go_down_at_bulk(3)  # chunks 1 and 2 (4 documents) get in, then the server is gone
    with pytest.raises(OpenSearchUnavailableError, match=r"cannot reach|bulk indexing failed") as exc:
        _build(tiny_docs, path, encoder, proxy.url, alias, chunk_size=2, threads=1, max_retries=2, **FAST)
    assert len(str(exc.value).splitlines()) == 1
    assert "drop" in proxy.injected and not path.exists()

    proxy.up()
    index = _build(tiny_docs, path, encoder, proxy.url, alias, chunk_size=2, threads=1, max_retries=2, **FAST)
    assert index.meta["opensearch"]["resumed_docs"] == 4
    ids = list(all_ids(index.client, alias))
    assert sorted(ids) == sorted(d.doc_id for d in tiny_docs)  # none lost, none twice
    assert index.count() == len(tiny_docs)
    retriever = index.retriever(encoder)
    for q in tiny_queries:
        assert retriever.retrieve(q, 12).doc_ids == lucene_retriever.retrieve(q, 12).doc_ids


def test_short_outage_is_ridden_out_by_the_back_off(tmp_path, encoder, tiny_docs, proxy, name, caplog):
    path, alias = tmp_path / "idx", name()
    proxy.go_down_at_bulk(2, drops=8)  # gone for 8 requests (past the client's own retries), then back
    with caplog.at_level(logging.WARNING, logger="twostage_search.indexes.opensearch"):
        index = _build(tiny_docs, path, encoder, proxy.url, alias, chunk_size=3, threads=1, max_retries=10, **FAST)
    assert "drop" in proxy.injected
    assert "retry 1/10" in caplog.text
    assert index.count() == len(tiny_docs) and index.meta["opensearch"]["resumed_docs"] == 0


@pytest.mark.parametrize("status", [429, 503])
def test_bulk_rejections_are_retried_with_back_off(tmp_path, encoder, tiny_docs, proxy, name, caplog, status):
    path, alias = tmp_path / "idx", name()
    proxy.reject_bulk(5, status)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="twostage_search.indexes.opensearch"):
        index = _build(
            tiny_docs, path, encoder, proxy.url, alias, chunk_size=4, threads=1,
            retry_backoff=0.05, max_backoff=1.0,
        )  # fmt: skip
    assert proxy.injected == [status] * 5
    assert f"HTTP {status}" in caplog.text
    assert index.count() == len(tiny_docs)
    if status == 429:  # 503 is also retried at once by the transport; 429 only by our back-off
        assert time.perf_counter() - started >= 0.05 + 0.1 + 0.2 + 0.4 + 0.8


def test_retries_exhausted_is_a_clear_error(tmp_path, encoder, tiny_docs, proxy, name):
    proxy.reject_bulk(100, 429)
    with pytest.raises(OpenSearchUnavailableError, match=r"bulk indexing failed after 2 retries \(HTTP 429"):
        _build(tiny_docs, tmp_path / "idx", encoder, proxy.url, name(), chunk_size=12, max_retries=2, **FAST)
    assert not (tmp_path / "idx").exists()


def test_rejected_document_fails_at_once(os_index):
    bad = {"_op_type": "index", "_index": os_index.meta["opensearch"]["index"], "_id": "bad"}
    bad["_source"] = {"doc_id": "bad", "splade": {"x": -1.0}}
    with pytest.raises(OpenSearchError, match="rejected document 'bad'"):
        bulk_index(os_index.client, [bad], os_index.settings)


def test_missing_index_is_a_clear_error(tmp_path, encoder, tiny_docs, opensearch_url, name, capsys):
    path = tmp_path / "idx"
    index = _build(tiny_docs[:3], path, encoder, opensearch_url, name())
    retriever = index.retriever(encoder)
    index.client.indices.delete(index=index.meta["opensearch"]["index"])  # the alias goes with it
    with pytest.raises(OpenSearchIndexMissingError, match="not found"):
        OpenSearchIndex.open(path)
    with pytest.raises(OpenSearchIndexMissingError, match="rebuild"):
        retriever.retrieve(Query("q", "paris"), k=3)
    capsys.readouterr()
    assert main(["search", "--index", str(path), "paris"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("twostage: error: OpenSearch index") and len(err.splitlines()) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_is_a_clear_error_without_credentials(tmp_path, encoder, tiny_docs, capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    for kwargs in ({"hosts": [url], "user": "admin", "password": "s3cret-pw"},
                   {"hosts": [url.replace("//", "//admin:s3cret-pw@")]}):  # fmt: skip
        with pytest.raises(OpenSearchUnavailableError) as exc:
            OpenSearchIndex.build(tiny_docs, tmp_path / "idx", encoder=encoder, progress=False, **kwargs)
        message = str(exc.value)
        assert message.startswith(f"cannot reach OpenSearch at {url} while connecting")
        assert "s3cret" not in message and len(message.splitlines()) == 1
        assert not (tmp_path / "idx").exists()
    corpus = str(TINY / "corpus.jsonl")
    capsys.readouterr()
    argv = ["index", corpus, "--index", str(tmp_path / "idx"), "--backend", "opensearch", "--opensearch-url", url]
    assert main([*argv, "--no-progress"]) == 1  # an unreachable cluster: a failure at run time
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the model loader's progress bar)
    assert last.startswith(f"twostage: error: cannot reach OpenSearch at {url}")


def test_no_credentials_in_logs_or_meta(tmp_path, encoder, tiny_docs, opensearch_url, name, caplog):
    settings = resolve_settings(hosts=[opensearch_url])
    if os.environ.get("OPENSEARCH_URL"):  # a real cluster: use its own credentials, if it has any
        if settings.password is None:
            pytest.skip("the cluster at $OPENSEARCH_URL takes no credentials")
        user, password = settings.user, settings.password.get_secret_value()
    else:  # the local node (no security plugin) and osmem accept any basic auth
        user, password = "admin", "s3cret-pw"
    secrets = [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
    path = tmp_path / "idx"
    with caplog.at_level(logging.DEBUG):
        index = OpenSearchIndex.build(
            tiny_docs[:3], path, encoder=encoder, progress=False, index_name=name(),
            hosts=[opensearch_url], user=user, password=password,
        )  # fmt: skip
        index.retriever(encoder).retrieve(Query("q", "paris"), k=2)
    text = caplog.text + (path / "meta.json").read_text() + repr(index.settings)
    assert all(s not in text for s in secrets)
