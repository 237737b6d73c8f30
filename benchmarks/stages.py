"""A benchmark system's stages: its first stage resolved to a retriever (an index given, reused, cached or
built; or a TREC run) and its reranker, with every parameter checked against its target's signature.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.configs import SystemConfig
from twostage_search.benchmarks.datasets import BeirDataset
from twostage_search.engine.errors import InputError, TwoStageError

log = logging.getLogger(__name__)

# build() keywords that do not change an index's contents (left out of the cache key).
_RUNTIME_OPTIONS = frozenset({"threads", "chunk_size", "total", "progress", "overwrite", "encoder", "index_name"})
# Encoder parameters that do not change document vectors.
_RUNTIME_ENCODER = frozenset({"batch_size", "device"})


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _bind(func: Any, params: dict[str, Any], what: str) -> dict[str, Any]:
    """``params`` with ``func``'s defaults filled in; unknown or missing ones are InputErrors."""
    try:
        bound = inspect.signature(func).bind(**params)
    except TypeError as exc:
        raise InputError(f"{what}: {exc}") from None
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("cls", "self")}


def _build_options(backend: Any, options: dict[str, Any], system: str) -> dict[str, Any]:
    """The backend's content-changing build options, defaults filled in (``scale``; BM25's ``k1``/``b``)."""
    params = inspect.signature(backend.build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params and not takes_any]
    if unknown or _RUNTIME_OPTIONS & set(options):
        bad = unknown or sorted(_RUNTIME_OPTIONS & set(options))
        allowed = [
            n
            for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _RUNTIME_OPTIONS and n != "encoder"
        ]
        raise InputError(
            f"system {system!r}: first_stage.options: unknown option(s) {', '.join(map(repr, bad))} "
            f"for {backend.backend} (allowed: {', '.join(allowed)})"
        )
    defaults = {
        n: p.default
        for n, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        and n not in _RUNTIME_OPTIONS
        and isinstance(p.default, (int, float, str))
        and not isinstance(p.default, bool)
    }
    return {**defaults, **options}


def _recorded(meta: dict[str, Any], key: str) -> Any:
    if key in meta:
        return meta[key]
    for section in meta.values():
        if isinstance(section, dict) and key in section:
            return section[key]
    return None


def meta_matches(meta: dict[str, Any], key: dict[str, Any], given: frozenset[str] = frozenset()) -> bool:
    """Whether an index's ``meta.json`` records the backend, document encoder and options of ``key``.

    A setting the meta does not record at all (an index from before it existed) counts as its default,
    unless the system sets it explicitly (``given``).
    """

    def same(recorded: Any, name: str, wanted: Any) -> bool:
        return recorded == wanted or (recorded is None and name not in given)

    if meta.get("backend") != key["backend"]:
        return False
    if key["encoder"] is not None:
        encoder = meta.get("encoder") or {}
        if encoder.get("name") != key["encoder"]:
            return False
        params = encoder.get("params") or {}
        if not all(same(params.get(k), k, v) for k, v in key["encoder_doc"].items()):
            return False
    return all(same(_recorded(meta, k), k, v) for k, v in key["options"].items())


def _same_documents(path: Path, dataset: BeirDataset, meta: dict[str, Any]) -> bool:
    if int(meta.get("doc_count", -1)) != dataset.doc_count:
        return False
    store = path / "docs.sqlite"
    if not store.is_file():
        return True  # no local document store (a cluster index): the count has to do
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        ids = {row[0] for row in con.execute("SELECT doc_id FROM docs")}
    finally:
        con.close()
    return ids == dataset.doc_ids


@dataclass
class Resolved:
    retriever: Any
    index_path: Path
    how: str  # "given", "reused", "cached", "built"


class Resources:
    """Encoders shared between systems with the same parameters (one model load each)."""

    def __init__(self) -> None:
        self.encoders: dict[str, Any] = {}

    def encoder(self, name: str, params: dict[str, Any]) -> Any:
        from twostage_search.engine.encoders import create_encoder

        key = canonical([name, params])
        if key not in self.encoders:
            try:
                self.encoders[key] = create_encoder(name, **params)
            except (TypeError, ValueError) as exc:
                raise InputError(f"encoder {name!r}: {exc}") from None
        return self.encoders[key]


@dataclass(frozen=True)
class IndexPlaces:
    """Where indexes are cached and reused, and how they are built."""

    index_cache: Path = Path("var/bench")
    reuse_dir: Path | None = Path("var")
    threads: int = 2
    progress: bool = True


def resolve_first_stage(system: SystemConfig, dataset: BeirDataset, settings: IndexPlaces, res: Resources) -> Resolved:
    from twostage_search import indexes
    from twostage_search.engine.registry import encoders, index_backends

    fs = system.first_stage
    if fs.run is not None:
        return _run_first_stage(system, dataset)
    backend = index_backends.get(fs.backend)
    encoder_name = fs.encoder_name
    encoder_params: dict[str, Any] = {}
    doc_side: dict[str, Any] = {}
    if encoder_name is not None:
        encoder_params = _bind(encoders.get(encoder_name), dict(fs.encoder_params), f"system {system.name!r} encoder")
        doc_side = {k: v for k, v in encoder_params.items() if not k.startswith("query_") and k not in _RUNTIME_ENCODER}

    if fs.index is not None:
        index = indexes.load(fs.index)
        if index.meta.get("backend") != fs.backend:
            raise InputError(
                f"system {system.name!r}: {fs.index} is a {index.meta.get('backend')!r} index, "
                f"but first_stage.backend is {fs.backend!r}"
            )
        if int(index.meta.get("doc_count", -1)) != dataset.doc_count:
            raise InputError(
                f"system {system.name!r}: {fs.index} holds {index.meta.get('doc_count')} documents, "
                f"the {dataset.name} corpus {dataset.doc_count}"
            )
        if encoder_name is None:
            return Resolved(indexes.open_retriever(index, fs.search), Path(fs.index), "given")
        if not fs.encoder_params and fs.encoder is None:  # the index's own encoder
            return Resolved(indexes.open_retriever(index, fs.search), Path(fs.index), "given")
        key: dict[str, Any] = {"backend": fs.backend, "encoder": encoder_name, "encoder_doc": doc_side, "options": {}}
        if not meta_matches(index.meta, key):
            raise InputError(
                f"system {system.name!r}: {fs.index} was built with encoder "
                f"{index.meta.get('encoder', {}).get('params')}, not {doc_side}"
            )
        encoder = res.encoder(encoder_name, encoder_params)
        return Resolved(indexes.open_retriever(index, fs.search, encoder), Path(fs.index), "given")

    options = _build_options(backend, dict(fs.options), system.name)
    key = {"backend": fs.backend, "encoder": encoder_name, "encoder_doc": doc_side, "options": options}
    given = frozenset(fs.options) | frozenset(fs.encoder_params)
    encoder = res.encoder(encoder_name, encoder_params) if encoder_name is not None else None

    def open_with(path: Path, how: str) -> Resolved:
        index = backend.open(path)
        return Resolved(indexes.open_retriever(index, fs.search, encoder), path, how)

    if settings.reuse_dir is not None:
        legacy = settings.reuse_dir / dataset.name
        if (legacy / "meta.json").is_file():
            from twostage_search.indexes.meta import read_meta

            try:
                meta = read_meta(legacy)
            except TwoStageError:
                meta = {}
            if meta and meta_matches(meta, key, given) and _same_documents(legacy, dataset, meta):
                log.info("system %r: reusing %s", system.name, legacy)
                return open_with(legacy, "reused")
    digest = hashlib.sha256(canonical(key).encode()).hexdigest()[:12]
    path = settings.index_cache / f"{dataset.name}-{dataset.fingerprint[:12]}" / f"{fs.backend}-{digest}"
    if (path / "meta.json").is_file():
        from twostage_search.indexes.meta import read_meta

        meta = read_meta(path)
        if meta_matches(meta, key, given) and int(meta.get("doc_count", -1)) == dataset.doc_count:
            return open_with(path, "cached")
    log.info("system %r: building a %s index of %s at %s", system.name, fs.backend, dataset.name, path)
    backend.build(
        dataset.documents(),
        path,
        encoder=encoder,
        total=dataset.doc_count,
        threads=settings.threads,
        progress=settings.progress,
        **options,
    )
    return open_with(path, "built")


def _run_first_stage(system: SystemConfig, dataset: BeirDataset) -> Resolved:
    from twostage_search.indexes.run_file import RunRetriever

    assert system.first_stage.run is not None
    retriever = RunRetriever(system.first_stage.run, dataset.corpus_path)
    absent = [q.query_id for q in dataset.queries if q.query_id not in retriever.query_ids]
    if absent:
        log.warning(
            "system %r: %d of %d queries have no ranking in %s (they score 0)",
            system.name,
            len(absent),
            len(dataset.queries),
            system.first_stage.run,
        )
    short = [q.query_id for q in dataset.queries if 0 < retriever.depth(q.query_id) < system.depth]
    if short:
        log.info(
            "system %r: %d queries hold fewer than depth=%d documents in the run", system.name, len(short), system.depth
        )
    return Resolved(retriever, Path(system.first_stage.run), "run")


def check_params(system: SystemConfig) -> None:
    """Encoder, build and reranker parameters must fit their targets' signatures (before any work)."""
    from twostage_search.engine.registry import encoders, index_backends, rerankers

    fs = system.first_stage
    if fs.run is not None and not Path(fs.run).is_file():
        raise InputError(f"system {system.name!r}: first_stage.run: file not found: {fs.run}")
    if fs.encoder_name is not None:
        _bind(encoders.get(fs.encoder_name), dict(fs.encoder_params), f"system {system.name!r}: encoder_params")
    if fs.run is None and fs.index is None:
        _build_options(index_backends.get(fs.backend), dict(fs.options), system.name)
    elif fs.run is None and fs.options:
        raise InputError(f"system {system.name!r}: first_stage.options apply to building; the index is given")
    _bind(rerankers.get(system.reranker.name), dict(system.reranker.params), f"system {system.name!r}: reranker")


def make_reranker(system: SystemConfig) -> Any:
    from twostage_search.engine.registry import rerankers

    factory = rerankers.get(system.reranker.name)
    try:
        return factory(**system.reranker.params)
    except (TypeError, ValueError) as exc:
        raise InputError(f"system {system.name!r}: reranker {system.reranker.name!r}: {exc}") from None


def describe(system: SystemConfig, retriever: Any) -> str:
    """The first stage as run: backend, encoder and the model the retriever really loaded."""
    if system.first_stage.run is not None:
        return system.describe_first_stage()
    encoder = getattr(retriever, "encoder", None)
    params = getattr(encoder, "params", None)
    if isinstance(params, dict) and params.get("model"):
        return f"{system.first_stage.backend} ({getattr(encoder, 'name', 'encoder')}, {params['model']})"
    k1, b = getattr(retriever, "k1", None), getattr(retriever, "b", None)
    if k1 is not None and b is not None:
        return f"{system.first_stage.backend} (BM25 k1={k1:g}, b={b:g})"
    return system.describe_first_stage()
