"""Hybrid first stage (``hybrid``): several first-stage indexes of one corpus, their rankings fused per query.

A hybrid index is a directory whose ``meta.json`` names its component indexes and the fusion settings::

    {"backend": "hybrid",
     "components": [{"name": "splade", "path": "splade", "weight": 1.0},
                    {"name": "bm25", "path": "bm25", "weight": 1.0},
                    {"name": "dense", "path": "dense", "weight": 1.0}],
     "fusion": {"method": "rrf", "k": 60, "depth": 100}, ...}

A component path is relative to the hybrid directory (components built inside it by
:meth:`HybridIndex.build`, i.e. ``twostage index --backend hybrid``) or absolute (existing indexes
composed by :meth:`HybridIndex.compose`, i.e. ``twostage hybrid``). Every component must index the same
documents. Each component retrieves ``max(k, depth)`` documents; the rankings are fused by
:mod:`twostage_search.engine.fusion` (``rrf``, ``minmax`` or ``zscore``, with the weights) and cut to
``k``. A component with weight 0 is not run. Because the configuration lives in ``meta.json``,
everything that opens an index (``twostage search``, the service, benchmarks) serves a hybrid unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twostage_search.engine.cost import StageCost
from twostage_search.engine.costed import RetrieveCall, costed_retriever
from twostage_search.engine.errors import IndexLoadError, InputError
from twostage_search.engine.fusion import DEFAULT_RRF_K, METHODS, MINMAX, fuse
from twostage_search.engine.protocols import FetchesTextsLater
from twostage_search.engine.registry import index_backends
from twostage_search.engine.types import Document, Query, RankedList, ScoredDoc
from twostage_search.indexes import load, open_retriever
from twostage_search.indexes.meta import atomic_index, read_meta, write_meta

log = logging.getLogger(__name__)

# The components a hybrid can build (name → backend), and what `twostage index --backend hybrid` builds
# by default: components, weights and fusion chosen on dev splits (docs/first-stage.md).
KNOWN_COMPONENTS = {"splade": "lucene-impact", "bm25": "bm25-csc", "dense": "dense-flat"}
# The backends that can build the ``bm25`` component: the in-process arrays (``bm25-csc``, the default: the
# same scores as Lucene's, in about half its time), or Lucene's index.
LEXICAL_BACKENDS = ("bm25-csc", "lucene-bm25")
DEFAULT_COMPONENTS = ("bm25", "dense")
DEFAULT_WEIGHTS = {"splade": 1.0, "bm25": 1.0, "dense": 2.0}
DEFAULT_METHOD = MINMAX
DEFAULT_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Component:
    """One input of a hybrid: a name (used in cost records), an index path and a fusion weight."""

    name: str
    path: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Fusion:
    """How rankings are fused: ``method`` (rrf, minmax, zscore), RRF's ``k``, and candidates per component."""

    method: str = DEFAULT_METHOD
    k: float = DEFAULT_RRF_K
    depth: int = DEFAULT_DEPTH

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"fusion method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.k < 0 or self.depth < 1:
            raise InputError(f"fusion needs k ≥ 0 and depth ≥ 1, got k={self.k}, depth={self.depth}")

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "depth": self.depth}


def _check_components(components: Sequence[Component]) -> None:
    names = [c.name for c in components]
    if len(components) < 2:
        raise InputError("a hybrid needs at least two components")
    if len(set(names)) != len(names):
        raise InputError(f"component names must be unique, got {names}")
    if any(not (c.weight >= 0) for c in components) or not any(c.weight > 0 for c in components):
        raise InputError("component weights must be ≥ 0, at least one > 0")


class HybridIndex:
    """Component indexes plus fusion settings; hands out a :class:`HybridRetriever`."""

    backend = "hybrid"
    needs_encoder = "splade" in DEFAULT_COMPONENTS  # `twostage index` hands it a SPLADE encoder only then

    def __init__(self, path: Path, meta: dict[str, Any], components: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self.components = components  # name → opened component index
        self.fusion = Fusion(**meta["fusion"])
        self.weights = {c["name"]: float(c["weight"]) for c in meta["components"]}

    @staticmethod
    def _write(tmp: Path, components: Sequence[Component], fusion: Fusion, doc_count: int, **extra: Any) -> None:
        meta = {
            "backend": HybridIndex.backend,
            "components": [{"name": c.name, "path": c.path, "weight": c.weight} for c in components],
            "fusion": fusion.as_dict(),
            "doc_count": doc_count,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        }
        write_meta(tmp, meta)

    @classmethod
    def build(
        cls,
        docs: Iterable[Document],
        path: str | Path,
        *,
        encoder: object = None,
        dense_encoder: object = None,
        components: Sequence[str] | None = None,
        weights: dict[str, float] | None = None,
        fusion: Fusion | None = None,
        threads: int = 2,
        total: int | None = None,
        progress: bool = True,
        overwrite: bool = True,
        scale: float | None = None,
        lexical: str = KNOWN_COMPONENTS["bm25"],
    ) -> HybridIndex:
        """Build the ``components`` (names of :data:`KNOWN_COMPONENTS`; default :data:`DEFAULT_COMPONENTS`)
        inside ``path``, atomically, with ``weights`` (default :data:`DEFAULT_WEIGHTS`, else 1).

        ``encoder`` is the SPLADE encoder (for ``lucene-impact``), ``dense_encoder`` the dense one (default:
        the backend's). ``lexical`` is the backend of the ``bm25`` component (one of :data:`LEXICAL_BACKENDS`; a
        ``bm25-csc`` component reports ``lucene-bm25``'s scores, so the fused rankings are the same). The
        documents are held in memory once, to feed each component.
        """
        if lexical not in LEXICAL_BACKENDS:
            raise InputError(f"lexical must be one of {', '.join(LEXICAL_BACKENDS)}, got {lexical!r}")
        names = list(components or DEFAULT_COMPONENTS)
        bad = sorted(set(names) - set(KNOWN_COMPONENTS))
        if bad:
            raise InputError(f"unknown hybrid component {', '.join(bad)} (known: {', '.join(KNOWN_COMPONENTS)})")
        weights = weights or {}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise InputError(f"no component named {', '.join(unknown)} (components: {', '.join(names)})")
        parts = [Component(n, n, float(weights.get(n, DEFAULT_WEIGHTS.get(n, 1.0)))) for n in names]
        _check_components(parts)
        fusion = fusion or Fusion()
        # Dependencies and models first: a missing extra fails before anything is written.
        if {"splade", "bm25"} & set(names):
            from twostage_search.indexes import _jvm

            _jvm.java_executable()
            _jvm.anserini_jar()
        if encoder is None and "splade" in names:
            from twostage_search.engine.encoders import create_encoder

            encoder = create_encoder("splade")
        if dense_encoder is None and "dense" in names:
            from twostage_search.indexes.dense import DenseFlatIndex

            dense_encoder = DenseFlatIndex.create_encoder()
        docs = list(docs)
        started = time.perf_counter()
        with atomic_index(path, overwrite=overwrite) as tmp:
            seconds = {}
            for part in parts:
                backend = lexical if part.name == "bm25" else KNOWN_COMPONENTS[part.name]
                factory = index_backends.get(backend)
                own = dense_encoder if backend == "dense-flat" and dense_encoder is not None else encoder
                options: dict[str, Any] = {"threads": threads, "total": total, "progress": progress}
                if scale is not None:
                    options["scale"] = scale
                if backend == "bm25-csc":  # lucene-bm25's scores, to the bit: the fusion is lucene-bm25's
                    options["scores"] = "anserini"
                part_started = time.perf_counter()
                factory.build(docs, tmp / part.name, encoder=own, **options)
                seconds[part.name] = round(time.perf_counter() - part_started, 3)
            seconds["total"] = round(time.perf_counter() - started, 3)
            cls._write(tmp, parts, fusion, len(docs), build_seconds=seconds)
        return cls.open(path)

    @classmethod
    def compose(
        cls, path: str | Path, components: Sequence[Component], fusion: Fusion | None = None, *, overwrite: bool = True
    ) -> HybridIndex:
        """Write a hybrid at ``path`` over existing indexes (paths stored absolute, symlinks not resolved, so a
        component that is rebuilt in place is picked up on the next open)."""
        _check_components(components)
        parts = [Component(c.name, os.path.abspath(c.path), c.weight) for c in components]
        target = Path(os.path.abspath(path))
        clash = [c.name for c in parts if target == Path(c.path) or target in Path(c.path).parents]
        if clash:
            raise InputError(f"{path} holds the component {', '.join(clash)}: write the hybrid somewhere else")
        opened = {c.name: load(c.path) for c in parts}  # every component must open before anything is written
        counts = {name: len(index) for name, index in opened.items()}
        if len(set(counts.values())) != 1:
            raise InputError(f"components index different numbers of documents: {counts}")
        with atomic_index(path, overwrite=overwrite) as tmp:
            cls._write(tmp, parts, fusion or Fusion(), next(iter(counts.values())))
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> HybridIndex:
        path = Path(path)
        meta = read_meta(path, backend=cls.backend)
        components = {}
        for c in meta.get("components", []):
            where = Path(c["path"]) if os.path.isabs(c["path"]) else path / c["path"]
            try:
                components[c["name"]] = load(where)
            except IndexLoadError as exc:
                raise IndexLoadError(f"hybrid {path}: component {c['name']!r}: {exc}") from None
        return cls(path, meta, components)

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    def retriever(
        self,
        encoder: object = None,
        *,
        weights: dict[str, float] | None = None,
        fusion: Fusion | None = None,
        parallel: bool = False,
        components: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> HybridRetriever:
        """A fused searcher; ``weights``/``fusion`` override the recorded ones (benchmarks tune them on dev).

        ``encoder`` is handed to every component (the SPLADE one uses it; the others ignore what they can't use).
        ``components`` gives components their own search options by name, e.g. ``{"dense": {"query_encoder":
        "bundled:bge-small-query-static"}}`` or ``{"splade": {"query_side": "lookup"}}`` (from the command line:
        ``--retriever-option dense.query_encoder=...``); an option a component's backend does not take is an
        :class:`InputError` naming the ones it does.
        """
        components = components or {}
        unknown = sorted((set(weights or {}) | set(components)) - set(self.weights))
        if unknown:
            raise InputError(f"no component named {', '.join(unknown)} (components: {', '.join(self.weights)})")
        ws = {**self.weights, **(weights or {})}
        parts = {
            name: open_retriever(index, components.get(name), encoder)
            for name, index in self.components.items()
            if ws.get(name, 0) > 0
        }
        return HybridRetriever(parts, {n: ws[n] for n in parts}, fusion or self.fusion, parallel=parallel)


class HybridRetriever:
    """Runs each component retriever to ``max(k, depth)``, fuses, keeps ``k``.

    A component that can leave texts out (:class:`~twostage_search.engine.protocols.FetchesTextsLater`)
    returns ids and scores only; the texts of the fused top ``k`` are then fetched once, each document's
    from the first component (in order) that returned it, as if every component had returned its texts.

    Costs: with ``parallel=False`` (components one after another) the query's cost is ``encode`` (the
    components' query encodings, summed) and ``retrieve`` (their searches plus fusion), so the records
    add up to the wall time as for any retriever; with ``parallel=True`` (one thread per component) the
    wall time is one ``retrieve`` record. :meth:`retrieve_with_component_costs` also returns each
    component's own records.
    """

    name = "hybrid"

    def __init__(
        self, components: dict[str, Any], weights: dict[str, float], fusion: Fusion, *, parallel: bool
    ) -> None:
        if not components:
            raise InputError("a hybrid retriever needs at least one component with weight > 0")
        self.components = components
        self.weights = weights
        self.fusion = fusion
        # Components that fetch texts later search without them; texts come for the fused top k only.
        self._lazy = {n for n, r in components.items() if isinstance(r, FetchesTextsLater)}
        self._calls: dict[str, RetrieveCall] = {
            n: costed_retriever(r, texts=n not in self._lazy) for n, r in components.items()
        }
        self._pool = ThreadPoolExecutor(len(components), thread_name_prefix="hybrid") if parallel else None

    def retrieve(self, query: Query, k: int) -> RankedList:
        return self.retrieve_with_cost(query, k)[0]

    def retrieve_with_cost(self, query: Query, k: int) -> tuple[RankedList, tuple[StageCost, ...]]:
        ranking, costs, _ = self.retrieve_with_component_costs(query, k)
        return ranking, costs

    def retrieve_with_component_costs(
        self, query: Query, k: int
    ) -> tuple[RankedList, tuple[StageCost, ...], dict[str, tuple[StageCost, ...]]]:
        """The fused ranking, its cost records, and each component's own cost records."""
        if k < 0:
            raise InputError(f"k must be non-negative, got {k}")
        started = time.perf_counter()
        depth = max(k, self.fusion.depth)
        if self._pool is None:
            results = {name: call(query, depth) for name, call in self._calls.items()}
        else:
            futures = {name: self._pool.submit(call, query, depth) for name, call in self._calls.items()}
            results = {name: f.result() for name, f in futures.items()}
        names = list(results)
        fused = fuse(
            [[(h.doc_id, h.score) for h in results[n][0]] for n in names],
            [self.weights[n] for n in names],
            method=self.fusion.method,
            k=self.fusion.k,
        )[:k]
        ranking = RankedList.from_sorted(query.query_id, fused, self._texts(query.query_id, fused, results))
        wall = (time.perf_counter() - started) * 1000
        per_component = {n: results[n][1] for n in names}
        tokens = sum(c.tokens_in for costs in per_component.values() for c in costs)
        if self._pool is not None:
            return ranking, (StageCost("retrieve", wall, docs=len(ranking), tokens_in=tokens),), per_component
        encode = sum(c.wall_ms for costs in per_component.values() for c in costs if c.stage == "encode")
        return (
            ranking,
            (
                StageCost("encode", encode, tokens_in=tokens),
                StageCost("retrieve", max(wall - encode, 0.0), docs=len(ranking)),
            ),
            per_component,
        )

    def _texts(
        self,
        query_id: str,
        fused: list[tuple[str, float]],
        results: dict[str, tuple[RankedList, tuple[StageCost, ...]]],
    ) -> dict[str, ScoredDoc]:
        """Text and title of every fused document, from the first component (in order) that returned it:
        from its ranking, or, for a component that left texts out, fetched now (one lookup per component)."""
        source: dict[str, str] = {}
        for name in reversed(results):  # the first component that returned a document wins
            source.update(dict.fromkeys(results[name][0].doc_ids, name))
        texts: dict[str, ScoredDoc] = {}
        for name, (ranking, _) in results.items():
            wanted = [(d, s) for d, s in fused if source[d] == name]
            if not wanted:
                continue
            if name in self._lazy:
                ranking = self.components[name].with_texts(RankedList.from_sorted(query_id, wanted))
            texts.update((h.doc_id, h) for h in ranking if source[h.doc_id] == name)
        return texts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for retriever in self.components.values():
            closer = getattr(retriever, "close", None)
            if closer is not None:
                closer()
