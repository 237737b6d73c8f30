"""PNG plots of a benchmark report (matplotlib's object API: no pyplot, no display, no backend switch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from twostage_search.benchmarks.report import BenchReport

QUALITY = "nDCG@10"


def _figure(**kwargs: Any) -> Figure:
    """A figure of its own: ``Figure.savefig`` renders a PNG without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _published_lines(published: list[dict[str, Any]], ys: list[float]) -> list[tuple[float, str]]:
    """Published nDCG@10 lines; labels of lines closer than 1.5% of the plot's range are joined."""
    values = sorted((p["ndcg10"], p["system"]) for p in published)
    if not values:
        return []
    span = max(v for v, _ in values + [(y, "") for y in ys]) - min(v for v, _ in values + [(y, "") for y in ys])
    lines: list[tuple[float, list[str]]] = []
    for value, name in values:
        if lines and value - lines[-1][0] < 0.015 * max(span, 1e-9):
            lines[-1][1].append(name)
        else:
            lines.append((value, [name]))
    return [(value, " / ".join(names) + " (published)") for value, names in lines]


def cost_quality_plot(report: BenchReport, path: Path) -> Path:
    """nDCG@10 against mean milliseconds per query, one labelled point per system.

    Published nDCG@10 figures for the dataset (no latency known) are drawn as dashed horizontal lines.
    """
    fig = _figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    xs = [max(r.latency_ms["total"]["mean"], 1e-3) for r in report.rows]
    ys = [r.quality.get(QUALITY, 0.0) for r in report.rows]
    ax.scatter(xs, ys, s=40, zorder=3)
    for row, x, y in zip(report.rows, xs, ys, strict=True):
        ax.annotate(row.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    for value, label in _published_lines(report.published, ys):
        ax.axhline(value, linestyle="--", linewidth=0.8, color="grey", zorder=1)
        ax.annotate(
            label, (0.99, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey", ha="right", va="bottom"
        )
    if max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean latency per query (ms, all stages)")
    ax.set_ylabel(QUALITY)
    ds = report.dataset
    ax.set_title(f"Cost and quality: {ds['name']} {ds['split']} ({ds['queries']} queries)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def delta_histogram(report: BenchReport, path: Path) -> Path | None:
    """Histogram of per-query nDCG@10 differences from the baseline, one panel per other system.

    Returns None (and writes nothing) when there is no system besides the baseline.
    """
    others = [r for r in report.rows if r.name != report.baseline]
    if not others or QUALITY not in report.measures:
        return None
    import numpy as np

    base = np.asarray(report.per_query[report.baseline][QUALITY])
    fig = _figure(figsize=(7, 2.6 * len(others)), dpi=120)
    axes = fig.subplots(len(others), 1, squeeze=False)
    bins = np.linspace(-1.025, 1.025, 42)  # 0.05 wide, one centred on 0
    for ax, row in zip(axes[:, 0], others, strict=True):
        delta = np.asarray(report.per_query[row.name][QUALITY]) - base
        ax.hist(delta, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(0, color="black", linewidth=0.8)
        wins, losses = int((delta > 1e-9).sum()), int((delta < -1e-9).sum())
        p = row.p_value.get(QUALITY)
        p_text = "n/a" if p is None else f"{p:.2g}"
        ax.set_title(
            f"{row.name} − {report.baseline}: mean {delta.mean():+.4f}, {wins} better / {losses} worse, p={p_text}",
            fontsize=9,
        )
        ax.set_ylabel("queries")
    axes[-1, 0].set_xlabel(f"per-query {QUALITY} difference from {report.baseline}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def cost_curve_plot(report: dict[str, Any], path: Path) -> Path:
    """The first stage's cost against corpus size (``benchmarks.studies.cost_curve``), log-log, one line per
    stage: p50 as a ratio to BM25 (growth exponent of p50 in the legend), build time, index size, peak memory."""
    fig = _figure(figsize=(10, 7), dpi=120)
    axes = fig.subplots(2, 2)
    panels = (
        ("p50_vs_bm25", "p50 latency ÷ BM25's (same run)"),
        ("build_seconds", "build seconds (from texts / pre-encoded vectors)"),
        ("index_mb", "index on disk (MB)"),
        ("peak_rss_mb", "peak RSS of a searching process (MB)"),
    )
    for ax, (key, label) in zip(axes.flat, panels, strict=True):
        for stage, by_size in report["stages"].items():
            sizes = [int(n) for n in by_size if key in by_size[n]]
            values = [max(float(by_size[str(n)][key]), 1e-3) for n in sizes]
            slope = report["growth_exponent"][stage]["p50"]
            name = f"{stage} (p50 ∝ N^{slope})" if key == "p50_vs_bm25" and slope is not None else stage
            ax.plot(sizes, values, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_title(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"First-stage cost against corpus size ({report['queries']} Home Depot queries)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
