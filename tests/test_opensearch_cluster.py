"""The ``opensearch`` backend on a real three-node OpenSearch cluster on 127.0.0.1 (indexes/opensearch/local.py).

An index of 3 shards and 1 replica; a node killed (SIGKILL) during a bulk build and restarted, after
which the resumed build holds exactly the corpus; searches while the node is down answered from the
replicas; an alias swap under concurrent searches. Every check of shard state first waits for the
cluster to be green (a replica may still be initialising right after an index is created), with
timeouts sized for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import threading
import time
from itertools import islice

import pytest

from tests.helpers import need
from twostage_search.engine.beir import read_corpus
from twostage_search.engine.types import Query

need("opensearchpy", "opensearch")
need("pydantic_settings", "opensearch")

from twostage_search.indexes.opensearch import OpenSearchIndex
from twostage_search.indexes.opensearch.ingest import alias_targets, all_ids
from twostage_search.indexes.opensearch.local import LocalCluster

pytestmark = pytest.mark.slow

SCIFACT = "benchmarks/data/scifact/corpus.jsonl.gz"
GREEN_TIMEOUT = 600  # seconds; a node restart on a loaded 2-core machine takes one or two minutes
# The cluster may answer 503 or time out while it reassigns a dead node's shards: retry for minutes.
PATIENT = {"shards": 3, "replicas": 1, "timeout": 60, "max_retries": 12, "retry_backoff": 0.5, "max_backoff": 10}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster.start(3, workdir=tmp_path_factory.mktemp("os-cluster"), timeout=GREEN_TIMEOUT) as c:
        yield c


def _build(cluster, docs, path, encoder, alias, **kw):
    options = {**PATIENT, **kw}
    return OpenSearchIndex.build(
        docs, path, encoder=encoder, progress=False, hosts=cluster.urls, index_name=alias, **options
    )


def _shards(cluster, index):
    cluster.wait_green(index=index, timeout=GREEN_TIMEOUT)  # never assert shard state before green
    return cluster.request(f"/_cat/shards/{index}?format=json&h=shard,prirep,state,node")


def test_three_shards_one_replica_rank_like_the_embedded_index(
    cluster, tmp_path, encoder, tiny_docs, tiny_queries, lucene_retriever
):
    index = _build(cluster, tiny_docs, tmp_path / "idx", encoder, "cluster-tiny")
    shards = _shards(cluster, index.meta["opensearch"]["index"])
    assert len(shards) == 6 and {s["state"] for s in shards} == {"STARTED"}
    for n in ("0", "1", "2"):  # a primary and its replica never share a node
        copies = [s["node"] for s in shards if s["shard"] == n]
        assert sorted(s["prirep"] for s in shards if s["shard"] == n) == ["p", "r"] and len(set(copies)) == 2
    retriever = index.retriever(encoder)
    for q in tiny_queries:
        expected = lucene_retriever.retrieve(q, k=len(tiny_docs))
        got = retriever.retrieve(q, k=len(tiny_docs))
        assert got.doc_ids == expected.doc_ids, q.text
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-9)


def test_node_killed_during_bulk_ingest_then_resumed(cluster, tmp_path, encoder, tiny_docs, tiny_queries):
    live = _build(cluster, tiny_docs, tmp_path / "live", encoder, "cluster-live")
    cluster.wait_green(index=live.meta["opensearch"]["index"], timeout=GREEN_TIMEOUT)
    reader = live.retriever(encoder)
    before = [reader.retrieve(q, k=10) for q in tiny_queries]

    corpus = list(islice(read_corpus(SCIFACT), 240))
    during: list = []

    def crashing_corpus():
        for i, doc in enumerate(corpus):
            if i == 80:
                # every copy in sync first: a replica still initialising on a slow machine cannot take over
                cluster.wait_green(index="cluster-big--*", timeout=GREEN_TIMEOUT)
                cluster.kill(1)  # SIGKILL a node holding primaries and replicas of both indexes
            if i == 120:  # the node is down: every shard of the live index must still answer
                during.extend(reader.retrieve(q, k=10) for q in tiny_queries)
            if i == 160:
                raise RuntimeError("the builder crashed")
            yield doc

    path = tmp_path / "big"
    with pytest.raises(RuntimeError, match="the builder crashed"):
        _build(cluster, crashing_corpus(), path, encoder, "cluster-big", chunk_size=20)
    assert during == before  # answered from the replicas, same rankings
    assert not path.exists()

    cluster.restart(1, timeout=GREEN_TIMEOUT)
    resumed = _build(cluster, corpus, path, encoder, "cluster-big", chunk_size=20)
    physical = resumed.meta["opensearch"]["index"]
    assert resumed.meta["opensearch"]["resumed_docs"] >= 80  # sent before the crash, not sent again
    assert resumed.count() == len(corpus) == resumed.meta["doc_count"]
    ids = list(all_ids(resumed.client, physical))
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(d.doc_id for d in corpus)
    shards = _shards(cluster, physical)
    assert len(shards) == 6 and {s["state"] for s in shards} == {"STARTED"}
    assert [reader.retrieve(q, k=10) for q in tiny_queries] == before


def test_alias_swap_is_atomic_under_concurrent_searches(cluster, tmp_path, encoder, tiny_docs):
    path, alias = tmp_path / "swap", "cluster-swap"
    first = _build(cluster, tiny_docs[:4], path, encoder, alias)
    reader = first.retriever(encoder)
    query = Query("q", "ocean tides moon earth")
    old = reader.retrieve(query, k=5).doc_ids
    stop = threading.Event()
    seen: list[list[str]] = []
    errors: list[BaseException] = []

    def search() -> None:
        while not stop.is_set():
            try:
                seen.append(reader.retrieve(query, k=5).doc_ids)
            except BaseException as exc:  # every failure is a test failure
                errors.append(exc)
                return

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(seen) < 2 and not errors and time.monotonic() < deadline:  # searching before the swap
            time.sleep(0.01)
        second = _build(cluster, tiny_docs, path, encoder, alias)
        new = second.retriever(encoder).retrieve(query, k=5).doc_ids
        for _ in range(20):  # a few searches after the swap too
            seen.append(reader.retrieve(query, k=5).doc_ids)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    assert old != new and set(map(tuple, seen)) <= {tuple(old), tuple(new)}
    assert seen[-1] == new and seen.count(old) >= 1
    assert alias_targets(second.client, alias) == [second.meta["opensearch"]["index"]]
    assert json.loads((path / "meta.json").read_text())["doc_count"] == len(tiny_docs)
