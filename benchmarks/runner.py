"""``twostage bench``: several systems on one BEIR-format dataset → one row per system.

    twostage bench --dataset benchmarks/data/scifact \\
        --systems benchmarks/systems/bm25.yaml benchmarks/systems/splade.yaml benchmarks/systems/splade+ce@20.yaml

For each system (a YAML file, :mod:`twostage_search.benchmarks.configs`) every query of the split goes through
``TwoStage.run`` one at a time, as a service would, after a few untimed warm-up queries. Each row has
nDCG@10, Recall@100, Recall@1000 and MRR@10 (ir-measures), a paired t-test of every measure against the
baseline system (the first, or ``--baseline``), mean and p95 latency per stage (from the pipeline's
``StageCost`` records) and in total, documents reranked, model tokens and money per query. Written to
``--out``: one TREC run per system (``runs/NAME.run``), ``report.json``, ``report.md`` and two PNG plots
(quality against mean latency; per-query nDCG@10 differences from the baseline).

Indexes: a system names an existing one (``first_stage.index``) or gets one built from the dataset and
cached under ``var/bench/DATASET-FINGERPRINT/BACKEND-KEY`` (the key covers the backend, the document
encoder and the build options), so a second run reuses it. ``var/DATASET`` (what ``make demo`` builds
for SciFact) is reused when its ``meta.json`` records the same backend, encoder and options and its
document ids are the corpus's.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.configs import PASS_THROUGH, SystemConfig, load_systems
from twostage_search.benchmarks.datasets import BeirDataset, load_beir
from twostage_search.benchmarks.evaluation import (
    Ranking,
    evaluate,
    machine,
    mean,
    paired_ttest,
    percentile,
    write_trec_run,
)
from twostage_search.benchmarks.published import published_for
from twostage_search.benchmarks.report import BenchReport, SystemRow, stage_order, write_report
from twostage_search.engine.errors import InputError, TwoStageError

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100", "R@1000", "RR@10")
# build() keywords that do not change an index's contents (left out of the cache key).
_RUNTIME_OPTIONS = frozenset({"threads", "chunk_size", "total", "progress", "overwrite", "encoder", "index_name"})
# Encoder parameters that do not change document vectors.
_RUNTIME_ENCODER = frozenset({"batch_size", "device"})


@dataclass(frozen=True)
class BenchSettings:
    """Everything a benchmark run depends on (the CLI fills it from its flags)."""

    dataset: Path
    systems: tuple[Path, ...]
    split: str = "test"
    out: Path = Path("runs/bench")
    baseline: str | None = None
    max_queries: int | None = None
    measures: tuple[str, ...] = MEASURES
    warmup: int = 5
    index_cache: Path = Path("var/bench")
    reuse_dir: Path | None = Path("var")
    threads: int = 2
    ignore_identical_ids: bool = True
    progress: bool = True
    plots: bool = True


# -------------------------------------------------------------------------------------- indexes
def _canonical(value: Any) -> str:
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


def _meta_matches(meta: dict[str, Any], key: dict[str, Any], given: frozenset[str] = frozenset()) -> bool:
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
class _Resolved:
    retriever: Any
    index_path: Path
    how: str  # "given", "reused", "cached", "built"


class _Resources:
    """Encoders shared between systems with the same parameters (one model load each)."""

    def __init__(self) -> None:
        self.encoders: dict[str, Any] = {}

    def encoder(self, name: str, params: dict[str, Any]) -> Any:
        from twostage_search.engine.encoders import create_encoder

        key = _canonical([name, params])
        if key not in self.encoders:
            try:
                self.encoders[key] = create_encoder(name, **params)
            except (TypeError, ValueError) as exc:
                raise InputError(f"encoder {name!r}: {exc}") from None
        return self.encoders[key]


def _resolve_first_stage(
    system: SystemConfig, dataset: BeirDataset, settings: BenchSettings, res: _Resources
) -> _Resolved:
    from twostage_search import indexes
    from twostage_search.engine.registry import encoders, index_backends

    fs = system.first_stage
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
            return _Resolved(index.retriever(), Path(fs.index), "given")
        if not fs.encoder_params and fs.encoder is None:
            return _Resolved(index.retriever(), Path(fs.index), "given")  # the index's own encoder
        key: dict[str, Any] = {"backend": fs.backend, "encoder": encoder_name, "encoder_doc": doc_side, "options": {}}
        if not _meta_matches(index.meta, key):
            raise InputError(
                f"system {system.name!r}: {fs.index} was built with encoder "
                f"{index.meta.get('encoder', {}).get('params')}, not {doc_side}"
            )
        return _Resolved(index.retriever(res.encoder(encoder_name, encoder_params)), Path(fs.index), "given")

    options = _build_options(backend, dict(fs.options), system.name)
    key = {"backend": fs.backend, "encoder": encoder_name, "encoder_doc": doc_side, "options": options}
    given = frozenset(fs.options) | frozenset(fs.encoder_params)
    encoder = res.encoder(encoder_name, encoder_params) if encoder_name is not None else None

    def open_with(path: Path, how: str) -> _Resolved:
        index = backend.open(path)
        return _Resolved(index.retriever(encoder) if encoder is not None else index.retriever(), path, how)

    if settings.reuse_dir is not None:
        legacy = settings.reuse_dir / dataset.name
        if (legacy / "meta.json").is_file():
            from twostage_search.indexes.meta import read_meta

            try:
                meta = read_meta(legacy)
            except TwoStageError:
                meta = {}
            if meta and _meta_matches(meta, key, given) and _same_documents(legacy, dataset, meta):
                log.info("system %r: reusing %s", system.name, legacy)
                return open_with(legacy, "reused")
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:12]
    path = settings.index_cache / f"{dataset.name}-{dataset.fingerprint[:12]}" / f"{fs.backend}-{digest}"
    if (path / "meta.json").is_file():
        from twostage_search.indexes.meta import read_meta

        meta = read_meta(path)
        if _meta_matches(meta, key, given) and int(meta.get("doc_count", -1)) == dataset.doc_count:
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


def _check_params(system: SystemConfig) -> None:
    """Encoder, build and reranker parameters must fit their targets' signatures (before any work)."""
    from twostage_search.engine.registry import encoders, index_backends, rerankers

    fs = system.first_stage
    if fs.encoder_name is not None:
        _bind(encoders.get(fs.encoder_name), dict(fs.encoder_params), f"system {system.name!r}: encoder_params")
    if fs.index is None:
        _build_options(index_backends.get(fs.backend), dict(fs.options), system.name)
    elif fs.options:
        raise InputError(f"system {system.name!r}: first_stage.options apply to building; the index is given")
    _bind(rerankers.get(system.reranker.name), dict(system.reranker.params), f"system {system.name!r}: reranker")


def _reranker(system: SystemConfig) -> Any:
    from twostage_search.engine.registry import rerankers

    factory = rerankers.get(system.reranker.name)
    try:
        return factory(**system.reranker.params)
    except (TypeError, ValueError) as exc:
        raise InputError(f"system {system.name!r}: reranker {system.reranker.name!r}: {exc}") from None


def _describe(system: SystemConfig, retriever: Any) -> str:
    """The first stage as run: backend, encoder and the model the retriever really loaded."""
    encoder = getattr(retriever, "encoder", None)
    params = getattr(encoder, "params", None)
    if isinstance(params, dict) and params.get("model"):
        return f"{system.first_stage.backend} ({getattr(encoder, 'name', 'encoder')}, {params['model']})"
    k1, b = getattr(retriever, "k1", None), getattr(retriever, "b", None)
    if k1 is not None and b is not None:
        return f"{system.first_stage.backend} (BM25 k1={k1:g}, b={b:g})"
    return system.describe_first_stage()


# ------------------------------------------------------------------------------------- running
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+@-]+", "_", name).strip("_") or "system"


@dataclass
class _SystemRun:
    rankings: dict[str, Ranking]
    stage_ms: dict[str, list[float]]
    total_ms: list[float]
    docs_reranked: list[int]
    tokens_in: list[int]
    tokens_out: list[int]
    usd: list[float]


def _run_system(
    system: SystemConfig, retriever: Any, reranker: Any, dataset: BeirDataset, settings: BenchSettings
) -> _SystemRun:
    from tqdm.auto import tqdm

    from twostage_search.engine.pipeline import TwoStage

    pass_through = system.reranker.name in PASS_THROUGH
    pipeline = TwoStage(retriever, reranker, depth=system.depth, rerank_depth=system.rerank_depth)
    queries = dataset.queries
    for q in queries[: settings.warmup]:  # JIT, torch kernels, caches: not timed
        pipeline.run(q, k=system.depth)
    run = _SystemRun({}, {}, [], [], [], [], [])
    per_query_stages: list[dict[str, float]] = []
    for q in tqdm(queries, desc=system.name, unit="q", disable=not settings.progress, dynamic_ncols=True):
        result = pipeline.run(q, k=system.depth)
        items = [(h.doc_id, h.score) for h in result.ranking]
        if settings.ignore_identical_ids:
            items = [(d, s) for d, s in items if d != q.query_id]
        run.rankings[q.query_id] = items
        stages: dict[str, float] = {}
        reranked = 0
        for cost in result.costs:
            stages[cost.stage] = stages.get(cost.stage, 0.0) + cost.wall_ms
            if cost.stage.startswith("rerank") and not pass_through:
                reranked += cost.docs
        per_query_stages.append(stages)
        run.total_ms.append(sum(c.wall_ms for c in result.costs))
        run.docs_reranked.append(reranked)
        run.tokens_in.append(sum(c.tokens_in for c in result.costs))
        run.tokens_out.append(sum(c.tokens_out for c in result.costs))
        run.usd.append(sum(c.usd for c in result.costs))
    names = stage_order(s for stages in per_query_stages for s in stages)
    run.stage_ms = {s: [stages.get(s, 0.0) for stages in per_query_stages] for s in names}
    return run


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(mean(values), 3), "p95": round(percentile(values, 95), 3)}


def run_benchmark(settings: BenchSettings) -> BenchReport:
    """Run every system on the dataset and write runs, ``report.json``, ``report.md`` and plots."""
    if settings.warmup < 0:
        raise InputError("warmup must be non-negative")
    systems = load_systems(list(settings.systems))  # every config is checked before any work starts
    names = [s.name for s in systems]
    baseline = settings.baseline or names[0]
    if baseline not in names:
        raise InputError(f"--baseline {baseline!r} is not one of the systems ({', '.join(names)})")
    for system in systems:
        _check_params(system)
    dataset = load_beir(settings.dataset, settings.split).head(settings.max_queries)
    query_ids = [q.query_id for q in dataset.queries]
    res = _Resources()
    at_start = machine()
    out = settings.out
    rows: list[SystemRow] = []
    per_query: dict[str, dict[str, list[float]]] = {}
    files: dict[str, str] = {}
    started = time.perf_counter()
    for system in systems:
        resolved = _resolve_first_stage(system, dataset, settings, res)
        reranker = _reranker(system)
        try:
            run = _run_system(system, resolved.retriever, reranker, dataset, settings)
        finally:
            for stage in (resolved.retriever, reranker):
                close = getattr(stage, "close", None)
                if callable(close):
                    close()
        per_query[system.name] = evaluate(dataset.qrels, query_ids, run.rankings, settings.measures)
        run_file = out / "runs" / f"{_slug(system.name)}.run"
        write_trec_run(run_file, query_ids, run.rankings, _slug(system.name))
        files[f"run:{system.name}"] = str(run_file)
        latency = {stage: _latency(values) for stage, values in run.stage_ms.items()}
        latency["total"] = _latency(run.total_ms)
        rows.append(
            SystemRow(
                name=system.name,
                first_stage=_describe(system, resolved.retriever),
                reranker=system.reranker.name,
                depth=system.depth,
                rerank_depth=system.effective_rerank_depth,
                index=f"{resolved.index_path} ({resolved.how})",
                queries=len(query_ids),
                quality={m: round(mean(v), 4) for m, v in per_query[system.name].items()},
                latency_ms=latency,
                docs_reranked=round(mean(run.docs_reranked), 2),
                tokens_in=round(mean(run.tokens_in), 1),
                tokens_out=round(mean(run.tokens_out), 1),
                usd_per_query=mean(run.usd),
                usd_total=sum(run.usd),
                run_file=str(run_file),
            )
        )
    base = per_query[baseline]
    for row in rows:
        if row.name == baseline:
            continue
        for m in settings.measures:
            row.delta[m] = round(row.quality[m] - mean(base[m]), 4)
            row.p_value[m] = paired_ttest(per_query[row.name][m], base[m])
    report = BenchReport(
        dataset={
            "name": dataset.name,
            "path": str(dataset.path),
            "split": dataset.split,
            "queries": len(query_ids),
            "documents": dataset.doc_count,
            "corpus_sha256": dataset.fingerprint,
        },
        baseline=baseline,
        measures=tuple(settings.measures),
        rows=rows,
        per_query=per_query,
        query_ids=query_ids,
        published=[p.as_dict() for p in published_for(dataset.name)],
        files=files,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        machine={
            **at_start,
            "load_average_at_end": machine()["load_average"],
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
    )
    report.settings["systems"] = [str(p) for p in settings.systems]
    if settings.plots:
        from twostage_search.benchmarks.plots import cost_quality_plot, delta_histogram

        out.mkdir(parents=True, exist_ok=True)
        report.files["plot:cost_quality"] = str(cost_quality_plot(report, out / "cost_quality.png"))
        hist = delta_histogram(report, out / "ndcg_delta_hist.png")
        if hist is not None:
            report.files["plot:ndcg_delta_hist"] = str(hist)
    write_report(report, out)
    return report
