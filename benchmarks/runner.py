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

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.configs import PASS_THROUGH, SystemConfig, load_systems
from twostage_search.benchmarks.datasets import BeirDataset, load_beir
from twostage_search.benchmarks.evaluation import (
    Ranking,
    compare,
    evaluate,
    machine,
    mean,
    percentile,
    write_trec_run,
)
from twostage_search.benchmarks.published import published_for
from twostage_search.benchmarks.report import BenchReport, SystemRow, stage_order, write_report
from twostage_search.benchmarks.stages import (
    IndexPlaces,
    Resources,
    check_params,
    describe,
    make_reranker,
    resolve_first_stage,
)
from twostage_search.engine.errors import InputError

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100", "R@1000", "RR@10")


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
    rel: int = 1  # lowest grade binary measures count as relevant (TREC DL: 2)
    test: str = "randomisation"  # or "t-test"; Holm-corrected across the table either way
    progress: bool = True
    plots: bool = True


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
        run.rankings[q.query_id] = [(h.doc_id, h.score) for h in result.ranking]
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


def reranker_in_domain(system: SystemConfig, dataset: str) -> bool:
    """Whether the system's reranker was fine-tuned on ``dataset`` (a bundled model that records it)."""
    from twostage_search.engine.models import trained_on

    model = system.reranker.params.get("model", "")  # no reranker defaults to a dataset-specific model
    return bool(model) and trained_on(str(model)) == dataset


def _latency(values: Sequence[float]) -> dict[str, float]:
    return {"mean": round(mean(values), 3), "p95": round(percentile(values, 95), 3)}


def run_benchmark(settings: BenchSettings, systems: Sequence[SystemConfig] | None = None) -> BenchReport:
    """Run every system on the dataset and write runs, ``report.json``, ``report.md`` and plots.

    The systems are ``settings.systems``' YAML files, or ``systems`` when given (already validated).
    """
    if settings.warmup < 0:
        raise InputError("warmup must be non-negative")
    if systems is None:
        systems = load_systems(list(settings.systems))  # every config is checked before any work starts
    if len({s.name for s in systems}) != len(systems):
        raise InputError("system names must be unique")
    names = [s.name for s in systems]
    baseline = settings.baseline or names[0]
    if baseline not in names:
        raise InputError(f"--baseline {baseline!r} is not one of the systems ({', '.join(names)})")
    for system in systems:
        check_params(system)
    dataset = load_beir(settings.dataset, settings.split).head(settings.max_queries)
    query_ids = [q.query_id for q in dataset.queries]
    res = Resources()
    at_start = machine()
    out = settings.out
    rows: list[SystemRow] = []
    per_query: dict[str, dict[str, list[float]]] = {}
    files: dict[str, str] = {}
    started = time.perf_counter()
    places = IndexPlaces(settings.index_cache, settings.reuse_dir, settings.threads, settings.progress)
    for system in systems:
        resolved = resolve_first_stage(system, dataset, places, res)
        reranker = make_reranker(system)
        try:
            run = _run_system(system, resolved.retriever, reranker, dataset, settings)
        finally:
            for stage in (resolved.retriever, reranker):
                close = getattr(stage, "close", None)
                if callable(close):
                    close()
        if settings.ignore_identical_ids:
            run.rankings = {q: [(d, s) for d, s in r if d != q] for q, r in run.rankings.items()}
        per_query[system.name] = evaluate(
            dataset.qrels, query_ids, run.rankings, settings.measures, rel=settings.rel, drop_query_id=False
        )
        run_file = out / "runs" / f"{_slug(system.name)}.run"
        write_trec_run(run_file, query_ids, run.rankings, _slug(system.name))
        files[f"run:{system.name}"] = str(run_file)
        latency = {stage: _latency(values) for stage, values in run.stage_ms.items()}
        latency["total"] = _latency(run.total_ms)
        rows.append(
            SystemRow(
                name=system.name,
                first_stage=describe(system, resolved.retriever),
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
                in_domain=reranker_in_domain(system, dataset.name),
            )
        )
    base = per_query[baseline]
    cells = [(row, m) for row in rows if row.name != baseline for m in settings.measures]
    results = compare([(per_query[row.name][m], base[m]) for row, m in cells], test=settings.test)
    for (row, m), c in zip(cells, results, strict=True):  # Holm across every cell of the table
        row.delta[m] = round(c.delta, 4)
        row.ci95[m] = (round(c.ci_low, 4), round(c.ci_high, 4))
        row.p_value[m] = c.p_value
        row.p_holm[m] = c.p_holm
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
