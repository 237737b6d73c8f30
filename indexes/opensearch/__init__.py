"""Scale-out SPLADE first stage on an OpenSearch cluster, through opensearch-py.

**Scoring.** Documents are encoded and quantised as for ``lucene-impact`` (``SparseVector.quantize(scale)``,
integer impacts) and stored in a ``rank_features`` field. A query is a ``bool.should`` of
``rank_feature`` clauses with ``linear`` scoring and the query's integer impacts as boosts: the linear
score is ``boost × stored value`` and ``should`` clauses add up, so a document's score is the dot
product of the two quantised vectors as OpenSearch stores them. Two limits make that differ from the
embedded index's exact integer dot product: ``FeatureField`` keeps 9 significant bits of a stored
impact (integers above 511 lose low bits; see :mod:`.mapping`), and the sum is returned as a float32.
A build therefore checks every document impact against :data:`.mapping.MAX_EXACT_IMPACT` (setting
``impact_check``: ``error``, the default, or ``warn``). Measured on OpenSearch 3.5.0 with SciFact
(1,200-doc subsample, 300 test queries, default SPLADE-tiny encoder, scale 100: largest impact 256),
one node and a 3-shard cluster both returned the embedded index's top 10 for all 300 queries, with
identical scores and nDCG@10 (``docs/opensearch.md``); with impacts above 511 they would differ
slightly. Scores are reported divided by ``scale**2``. With ``query_mode="neural_sparse"`` the same
weights go in a ``neural_sparse`` query's ``query_tokens`` (needs the neural-search plugin; a server
without it answers 400 and the retriever falls back to ``rank_feature`` with a warning).

**Index lifecycle.** The local directory holds only ``meta.json`` (the cluster holds the documents,
their vectors, title and text). Searches go through an alias; each build writes a new physical index
``ALIAS--TIMESTAMP-RANDOM`` and, after a count check (documents sent = documents searchable), swaps the
alias to it in one ``_aliases`` call and deletes the old one, so readers never see a half-built index.
Documents are indexed with ``_id = doc_id`` (re-sending one overwrites it, never duplicates it), and
bulk requests are retried with :func:`twostage_search.engine.retry.backoff_delay` on 429, 5xx and
connection errors. A build that fails anyway keeps its partial physical index, marked ``building``; the
next build of the same alias with the same encoder and scale resumes it.

Modules: :mod:`.settings` (connection settings, ``TWOSTAGE_OPENSEARCH_*``), :mod:`.client` (client,
errors), :mod:`.mapping` (field, feature names, exactness), :mod:`.ingest`, :mod:`.index`
(:class:`OpenSearchIndex`), :mod:`.search` (:class:`OpenSearchRetriever`), :mod:`.local` (a real
OpenSearch node or cluster on this machine, for tests and benchmarks).
"""

from twostage_search.indexes.opensearch.client import (
    OpenSearchError,
    OpenSearchIndexMissingError,
    OpenSearchUnavailableError,
    connect,
    resolve_settings,
)
from twostage_search.indexes.opensearch.index import OpenSearchIndex
from twostage_search.indexes.opensearch.mapping import MAX_CLAUSES, MAX_EXACT_IMPACT, escape_term, unescape_term
from twostage_search.indexes.opensearch.search import OpenSearchRetriever

__all__ = [
    "MAX_CLAUSES",
    "MAX_EXACT_IMPACT",
    "OpenSearchError",
    "OpenSearchIndex",
    "OpenSearchIndexMissingError",
    "OpenSearchRetriever",
    "OpenSearchUnavailableError",
    "connect",
    "escape_term",
    "resolve_settings",
    "unescape_term",
]
