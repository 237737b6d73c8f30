"""The ``opensearch-knn`` backend: dense vectors in an OpenSearch ``knn_vector`` field, searched by HNSW.

Documents are encoded as for ``dense-flat`` (:class:`~twostage_search.engine.dense.DenseEncoder`, default
bge-small INT8, unit vectors) and stored with their title and text in a ``knn_vector`` field of the k-NN
plugin (``opensearch-knn``), method ``hnsw`` on the ``lucene`` engine with ``innerproduct`` space: the
Lucene engine needs no native library, so it runs wherever the plugin's Java code does (the plugin's
zip on Maven Central has no faiss/nmslib libraries). Build parameters ``m`` and ``ef_construction`` are
recorded in ``meta.json``; at search time the graph is searched with a candidate queue of
``max(k, ef_search)``. The index lives behind an alias and is built, checked and swapped like the
``opensearch`` SPLADE index (:func:`~.ingest.build_alias`): readers never see a half-built index.

Scores: Lucene reports an inner product ``d`` as ``1 + d`` when ``d ≥ 0`` and ``1 / (1 − d)`` otherwise;
:func:`inner_product` undoes that, so scores are cosine similarities as ``dense-flat`` gives them
(computed by Lucene in float32). Ties are broken by ``doc_id`` on the server.

For a hybrid on the cluster, compose this index with an ``opensearch`` (SPLADE) index of the same corpus:
``twostage hybrid --index H --component splade=S --component dense=D`` fuses the two answers per query.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twostage_search.engine.cost import StageCost
from twostage_search.engine.dense import DenseTextEncoder, create_dense_encoder, dense_encoder_from_config
from twostage_search.engine.dense_query import FULL, QueryEncoder, student_for
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Document, Query, RankedList
from twostage_search.indexes.dense import DenseFlatIndex
from twostage_search.indexes.docstore import DocStore
from twostage_search.indexes.opensearch.client import resolve_settings, translate_errors
from twostage_search.indexes.opensearch.index import AliasedIndex, check_alias
from twostage_search.indexes.opensearch.ingest import Built
from twostage_search.indexes.opensearch.mapping import SOURCE_FIELDS, default_alias

if TYPE_CHECKING:
    from twostage_search.indexes.opensearch.settings import OpenSearchSettings

VECTOR_FIELD = "dense"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class KnnMethod:
    """HNSW settings of the ``knn_vector`` field (``m``, ``ef_construction``) and of searches (``ef_search``)."""

    m: int = 16
    ef_construction: int = 100
    ef_search: int = 100

    def __post_init__(self) -> None:
        if self.m < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise InputError(f"k-NN method needs m ≥ 2, ef_construction ≥ 1, ef_search ≥ 1, got {self}")


def inner_product(score: float) -> float:
    """The inner product behind a Lucene ``innerproduct`` score (``1 + d`` for d ≥ 0, ``1 / (1 − d)`` below)."""
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


class DenseFields:
    """The ``knn_vector`` field: each document's unit vector, from the encoder or from stored vectors.

    ``vectors`` maps a chunk of documents to their vectors: the dense encoder's ``encode_docs`` over their
    texts, or a look-up in a ``dense-flat`` index's matrix (:meth:`OpenSearchKnnIndex.from_dense`).
    """

    def __init__(self, vectors: Callable[[list[Document]], np.ndarray], dim: int, method: KnnMethod) -> None:
        self.vectors = vectors
        self.index_settings: dict[str, Any] = {"knn": True}
        hnsw = {"m": method.m, "ef_construction": method.ef_construction}
        self.properties: dict[str, Any] = {
            VECTOR_FIELD: {
                "type": "knn_vector",
                "dimension": dim,
                "method": {"name": "hnsw", "engine": "lucene", "space_type": "innerproduct", "parameters": hnsw},
            }
        }

    def __call__(self, docs: list[Document]) -> list[dict[str, Any]]:
        vectors = np.asarray(self.vectors(docs), dtype=np.float32)
        return [{VECTOR_FIELD: [float(x) for x in v]} for v in vectors]


class OpenSearchKnnIndex(AliasedIndex):
    """Dense vectors on an OpenSearch cluster (k-NN plugin, Lucene HNSW); ``meta.json`` locally."""

    backend = "opensearch-knn"
    needs_encoder = False  # brings its own dense encoder (``create_encoder``, recorded in meta.json)

    create_encoder = DenseFlatIndex.create_encoder  # the encoder `twostage index` builds with (--model, --max-length)

    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: object = None,
        method: KnnMethod | None = None,
        chunk_size: int = 64,
        scale: float | None = None,  # `twostage index` passes every backend a SPLADE scale: unused
        **options: Any,
    ) -> OpenSearchKnnIndex:
        """Encode ``docs`` into a new physical index on the cluster and point the alias at it.

        ``encoder`` is a dense encoder (:class:`DenseTextEncoder`; anything else: the default bge-small);
        ``options`` are those of :meth:`OpenSearchIndex.build <.index.OpenSearchIndex.build>` (``threads``,
        ``total``, ``progress``, ``overwrite``, ``index_name``, ``resume``, ``settings`` and connection fields
        such as ``hosts``).
        """
        dense = encoder if isinstance(encoder, DenseTextEncoder) else create_dense_encoder()
        method = method or KnnMethod()
        fields = DenseFields(lambda chunk: dense.encode_docs([d.full_text for d in chunk]), dense.dim, method)
        return cls._build(docs, path, fields, dense.config(), method, chunk_size=chunk_size, **options)

    @classmethod
    def from_dense(
        cls,
        source: str | Path,
        path: str | Path,
        *,
        method: KnnMethod | None = None,
        chunk_size: int = 256,
        **options: Any,
    ) -> OpenSearchKnnIndex:
        """The documents and vectors of the ``dense-flat`` index at ``source`` on the cluster, not re-encoded.

        ``options`` are :meth:`build`'s (``hosts=``, ``index_name=``, ``threads=``, ...). The new index
        records ``source``'s encoder and its recorded query side (``query_encoder``: a student such as
        ``bundled:bge-small-query-static``, when ``source`` has one), so queries are encoded as they were for
        ``source``.
        """
        flat = DenseFlatIndex.open(source)
        rows = {doc_id: row for row, doc_id in enumerate(flat.doc_ids)}
        store = DocStore(flat.path)

        def documents() -> Iterator[Document]:
            for start in range(0, len(flat.doc_ids), chunk_size):
                ids = flat.doc_ids[start : start + chunk_size]
                found = store.get_many(ids)
                yield from (found[doc_id] for doc_id in ids)

        def vectors(chunk: list[Document]) -> np.ndarray:
            return np.asarray(flat.vectors[[rows[d.doc_id] for d in chunk]], dtype=np.float32)

        method = method or KnnMethod()
        fields = DenseFields(vectors, int(flat.meta["dim"]), method)
        options.setdefault("total", len(flat))
        return cls._build(documents(), path, fields, dict(flat.meta["encoder"]), method, chunk_size=chunk_size,
                          query_encoder=flat.meta.get("query_encoder"), **options)  # fmt: skip

    @classmethod
    def _build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        fields: DenseFields,
        encoder_config: dict[str, Any],
        method: KnnMethod,
        *,
        chunk_size: int,
        threads: int = 2,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        index_name: str | None = None,
        resume: bool = True,
        settings: OpenSearchSettings | None = None,
        query_encoder: str | None = None,
        **connection: Any,
    ) -> OpenSearchKnnIndex:
        settings = resolve_settings(settings, **connection)
        alias = check_alias(index_name or default_alias(path))
        build_meta = {
            "format": _FORMAT,
            "alias": alias,
            "state": "building",
            "encoder": encoder_config,
            "method": fields.properties[VECTOR_FIELD]["method"],
        }

        def describe(built: Built) -> dict[str, Any]:
            recorded = {"query_encoder": query_encoder} if query_encoder not in (None, FULL) else {}
            return recorded | {
                "encoder": encoder_config,
                "dim": fields.properties[VECTOR_FIELD]["dimension"],
                "doc_count": built.doc_count,
                "method": asdict(method),
                "similarity": "inner product of L2-normalised vectors (cosine), Lucene HNSW on the cluster",
            }

        return cls.build_on_cluster(
            docs, path, fields, build_meta, describe, settings=settings, threads=threads, chunk_size=chunk_size,
            total=total, progress=progress, overwrite=overwrite, resume=resume,
        )  # fmt: skip

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def encoder(self, **overrides: Any) -> DenseTextEncoder:
        """The encoder this index was built with, re-created from ``meta.json``."""
        return dense_encoder_from_config(self.meta["encoder"], **overrides)

    def retriever(
        self, encoder: object = None, *, ef_search: int | None = None, query_encoder: str | None = None
    ) -> OpenSearchKnnRetriever:
        """A searcher; pass a dense encoder (:class:`DenseTextEncoder`) to share a loaded one (others are ignored).

        ``query_encoder``: ``"full"`` (the encoder that built the index) or a student fitted onto it (see
        :meth:`DenseFlatIndex.query_encoder`); default: the one recorded in ``meta.json``, else ``"full"``.
        """
        ef = ef_search if ef_search is not None else int(self.meta["method"]["ef_search"])
        if ef < 1:
            raise InputError(f"ef_search must be at least 1, got {ef}")
        spec = query_encoder or str(self.meta.get("query_encoder", FULL))
        dense: QueryEncoder
        if spec == FULL:
            dense = encoder if isinstance(encoder, DenseTextEncoder) else self.encoder()
        else:
            dense = student_for(spec, self.meta["encoder"], encoder)
        if dense.dim != int(self.meta["dim"]):
            raise InputError(f"encoder gives {dense.dim}-d vectors, the index holds {self.meta['dim']}-d")
        return OpenSearchKnnRetriever(self, dense, ef_search=ef)


class OpenSearchKnnRetriever:
    """Encode the query, ask the cluster's HNSW graph for the nearest ``k`` (cosine scores, ties by doc_id).

    Thread-safe: the encoder is read-only and opensearch-py's client is shared safely between threads.
    """

    name = "dense"

    def __init__(self, index: OpenSearchKnnIndex, encoder: QueryEncoder, *, ef_search: int) -> None:
        self.index = index
        self.encoder = encoder
        self.ef_search = ef_search

    def retrieve(self, query: Query, k: int) -> RankedList:
        return self.retrieve_with_cost(query, k)[0]

    def query_body(self, vector: np.ndarray, k: int) -> dict[str, Any]:
        """The k-NN search request: a queue of ``max(k, ef_search)`` candidates, the top ``k`` returned."""
        knn = {VECTOR_FIELD: {"vector": [float(x) for x in vector], "k": max(k, self.ef_search)}}
        return {
            "size": k,
            "query": {"knn": knn},
            "_source": SOURCE_FIELDS,
            "track_total_hits": False,
            "sort": [{"_score": {"order": "desc"}}, {"doc_id": {"order": "asc"}}],
        }

    def search_vector(self, vector: np.ndarray, k: int) -> list[Candidate]:
        """The top ``k`` documents for a query vector, with their texts."""
        if k == 0:
            return []
        index = self.index
        with translate_errors(index.settings, f"searching {index.alias!r}", missing=index.missing_message()):
            resp = index.client.search(index=index.alias, body=self.query_body(vector, k))
        hits = []
        for h in resp["hits"]["hits"]:
            score = h.get("_score") if h.get("_score") is not None else h["sort"][0]
            src = h.get("_source", {})
            hits.append(Candidate(h["_id"], inner_product(float(score)), src.get("text", ""), src.get("title", "")))
        return hits

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        """The ranking and its cost split into ``encode`` (query vector) and ``retrieve`` (cluster search)."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        vector = self.encoder.encode_queries([query.text])[0]
        encoded = time.perf_counter()
        ranking = RankedList.from_candidates(query.query_id, self.search_vector(vector, k))
        done = time.perf_counter()
        tokens = self.encoder.count_tokens([self.encoder.query_prefix + query.text])
        return ranking, (
            StageCost("encode", (encoded - started) * 1000, docs=0, tokens_in=tokens),
            StageCost("retrieve", (done - encoded) * 1000, docs=len(ranking)),
        )

    def close(self) -> None:
        """Nothing to release: the client belongs to the index."""
