"""A benchmark report: one row per system, and how it is written (Markdown table, JSON, plots)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.configs import PASS_THROUGH
from twostage_search.benchmarks.published import MODEL_NOTE
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.cpu import describe_cpu
from twostage_search.engine.errors import TwoStageError, exit_status


@dataclass
class SystemRow:
    """One system's results: quality, significance against the baseline, and costs per query."""

    name: str
    first_stage: str
    reranker: str
    depth: int
    rerank_depth: int
    index: str
    queries: int
    quality: dict[str, float]
    delta: dict[str, float] = field(default_factory=dict)
    p_value: dict[str, float | None] = field(default_factory=dict)
    p_holm: dict[str, float | None] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    docs_reranked: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    usd_per_query: float = 0.0
    usd_total: float = 0.0
    run_file: str = ""
    in_domain: bool = False  # the reranker was trained on this dataset


@dataclass
class BenchReport:
    dataset: dict[str, Any]
    baseline: str
    measures: tuple[str, ...]
    rows: list[SystemRow]
    per_query: dict[str, dict[str, list[float]]]
    query_ids: list[str]
    published: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> SystemRow:
        return next(r for r in self.rows if r.name == name)


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _fmt_ms(stats: dict[str, float] | None) -> str:
    return "–" if stats is None else f"{stats['mean']:.1f} / {stats['p95']:.1f}"


_STAGE_ORDER = ("cache", "encode", "retrieve")


def stage_order(stages: Iterable[str]) -> list[str]:
    """Stage names in pipeline order: cache, encode, retrieve, then the others as first seen."""
    seen: list[str] = []
    for s in stages:
        if s != "total" and s not in seen:
            seen.append(s)
    known = [s for s in _STAGE_ORDER if s in seen]
    return known + [s for s in seen if s not in _STAGE_ORDER]


def markdown_table(report: BenchReport) -> str:
    """The results table: quality (difference from the baseline with its bootstrap 95% CI and Holm-adjusted
    paired p-value) and costs, one row per system."""
    stages = stage_order(s for row in report.rows for s in row.latency_ms)
    head = ["system", *report.measures]
    head += [f"{s} ms (mean / p95)" for s in stages]
    head += ["total ms (mean / p95)", "docs reranked / q", "tokens / q", "$ / q"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        cells = [row.name + (" (in-domain)" if row.in_domain else "")]
        for m in report.measures:
            value = f"{row.quality[m]:.4f}"
            if row.name != report.baseline and m in row.delta:
                lo, hi = row.ci95[m]
                value += f" ({row.delta[m]:+.4f} [{lo:+.4f}, {hi:+.4f}], p_holm={_fmt_p(row.p_holm.get(m))})"
            cells.append(value)
        pass_through = row.reranker in PASS_THROUGH
        for s in stages:
            shown = None if (pass_through and s.startswith("rerank")) else row.latency_ms.get(s)
            cells.append(_fmt_ms(shown))
        cells.append(_fmt_ms(row.latency_ms["total"]))
        cells.append(f"{row.docs_reranked:g}")
        cells.append(f"{row.tokens_in + row.tokens_out:g}")
        cells.append(f"{row.usd_per_query:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _markdown(report: BenchReport) -> str:
    ds = report.dataset
    parts = [
        f"# Benchmark: {ds['name']} ({ds['split']})",
        "",
        f"{ds['queries']} queries, {ds['documents']:,} documents (`{ds['path']}`). Each measure of a system "
        f"shows its difference from **{report.baseline}** with a paired bootstrap 95% CI and the two-sided "
        f"paired {report.settings.get('test', 'randomisation')} test's p-value, Holm-corrected across every "
        f"cell of the table; binary measures count grade ≥ {report.settings.get('rel', 1)} as relevant. "
        "Latency is wall-clock per query, one "
        f"query at a time, after {report.settings.get('warmup')} untimed warm-up queries; a pass-through "
        "reranker (identity) has no rerank cost (–).",
        "",
        markdown_table(report),
        "",
        "| system | first stage | reranker | depth | rerank depth | index |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        parts.append(
            f"| {row.name} | {row.first_stage} | {row.reranker} | {row.depth} | {row.rerank_depth} | `{row.index}` |"
        )
    if any(row.in_domain for row in report.rows):
        parts += [
            "",
            "(in-domain): the reranker was fine-tuned on this dataset's train split, so its numbers here are not "
            "zero-shot and are not comparable with published zero-shot figures.",
        ]
    if report.published:
        parts += ["", "## Published figures on this dataset", ""]
        parts += ["| system | model | nDCG@10 | R@100 | R@1000 | source |", "|---|---|---|---|---|---|"]
        for p in report.published:
            r100 = "" if p["recall100"] is None else f"{p['recall100']:.4f}"
            r1000 = "" if p["recall1000"] is None else f"{p['recall1000']:.4f}"
            parts.append(f"| {p['system']} | {p['model']} | {p['ndcg10']:.4f} | {r100} | {r1000} | {p['source']} |")
        parts += ["", MODEL_NOTE]
    m = report.machine
    load = f" Load average (1, 5, 15 min) at start {m.get('load_average')}, at end {m.get('load_average_at_end')}."
    kind = describe_cpu(m.get("cpu") or {}) or m.get("processor")
    parts += ["", f"Machine: {m.get('cpus')} CPUs, {kind}, Python {m.get('python')}." + load]
    if report.files:
        parts += ["", "Files: " + ", ".join(f"`{v}`" for v in report.files.values())]
    return "\n".join(parts) + "\n"


def write_report(report: BenchReport, out: Path) -> None:
    """Write ``report.json`` and ``report.md`` into ``out`` (plots, if any, are already in ``report.files``)."""
    out.mkdir(parents=True, exist_ok=True)
    report.files["report:json"] = str(out / "report.json")
    report.files["report:md"] = str(out / "report.md")
    payload = {
        "dataset": report.dataset,
        "baseline": report.baseline,
        "measures": list(report.measures),
        "systems": [asdict(r) for r in report.rows],
        "published": report.published,
        "files": report.files,
        "settings": report.settings,
        "machine": report.machine,
        "per_query": {"query_ids": report.query_ids, **report.per_query},
    }
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` atomically (temp file beside it, then rename)."""
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def run_study(args: Any, run: Callable[[Any], dict[str, Any]], table: Callable[[dict[str, Any]], str]) -> int:
    """A study's command: ``run(args)``, its report written to ``args.out`` (JSON, atomically) when given and
    ``table(report)`` on stdout; a :class:`TwoStageError` or ``OSError`` is one line on stderr and a nonzero
    status (:func:`~twostage_search.engine.errors.exit_status`)."""
    try:
        report = run(args)
    except (TwoStageError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exit_status(exc)
    if getattr(args, "out", None) is not None:
        write_json(args.out, report)
    sys.stdout.write(table(report).rstrip("\n") + "\n")
    return 0
