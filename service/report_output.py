"""The experiment report read from a log store and written out: Markdown tables, JSON and one PNG plot.

The plot uses matplotlib's object API (``Figure``; no pyplot, no display, no backend switch).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.service.experiment import ExperimentConfig
from twostage_search.service.report import Report, build_report
from twostage_search.service.ubi.records import LogStore

TABLE = "report.md"
DATA = "report.json"
PLOT = "report.png"


def latest_experiment(store: LogStore) -> str | None:
    """The experiment of the most recent query record, if any."""
    name = None
    for record in store.queries():
        name = record.experiment or name
    return name


def report_for(
    store: LogStore,
    *,
    experiment: str | None = None,
    config: ExperimentConfig | None = None,
    click_actions: Sequence[str] = ("click",),
) -> Report:
    """Build the report of ``experiment`` (default: ``config``'s name, else the last one logged)."""
    name = experiment or (config.name if config is not None else None) or latest_experiment(store)
    if name is None:
        raise InputError("the log holds no queries")
    if config is not None and config.name != name:
        config = None  # another experiment than the one configured: no weights, arms from the log
    queries = list(store.queries(experiment=name))
    if not queries:
        raise InputError(f"the log holds no queries of experiment {name!r}")
    events = list(store.events(experiment=name))
    return build_report(queries, events, experiment=name, config=config, click_actions=click_actions)


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    return "–" if value is None else ("<0.0001" if value < 1e-4 else f"{value:.4f}")


def markdown(report: Report) -> str:
    """The report as Markdown tables: arms, differences or interleaving pairs, quality per cost, SRM."""
    lines = [f"# Experiment {report.experiment} ({report.mode}; control: {report.control})", ""]
    lines += [
        "| arm | queries | users | CTR | MRR | abandonment | zero-result | p50 ms | p95 ms "
        "| cost ms | docs reranked | tokens | $ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in report.arms:
        lines.append(
            f"| {a.arm} | {a.queries} | {a.users} | {_num(a.ctr)} | {_num(a.mrr)} | {_num(a.abandonment)} "
            f"| {_num(a.zero_result_rate)} | {_num(a.p50_ms, 1)} | {_num(a.p95_ms, 1)} | {_num(a.mean_ms, 1)} "
            f"| {_num(a.mean_docs, 1)} | {_num(a.mean_tokens, 0)} | {a.mean_usd:.6f} |"
        )
    lines.append("")
    if report.mode == "interleave":
        lines += [
            "Interleaved: every query ran every arm (costs add up: the `interleaved` row is their sum); an arm's "
            "CTR and MRR count clicks on the documents it placed.",
            "",
            "| arm | vs | wins | ties | losses | win rate | 95% CI | p (sign test) | p (Holm) |",
            "|---|---|---:|---:|---:|---:|---|---:|---:|",
        ]
        for p in report.pairs:
            ci = f"[{_num(p.low)}, {_num(p.high)}]" if p.low is not None else "–"
            lines.append(
                f"| {p.arm} | {p.other} | {p.wins} | {p.ties} | {p.losses} | {_num(p.win_rate)} | {ci} "
                f"| {_p(p.p_value)} | {_p(p.p_holm)} |"
            )
    else:
        lines += [
            f"Differences against {report.control} ({report.bootstrap}; two-sided bootstrap p, Holm across arms):",
            "",
            "| arm | metric | difference | 95% CI | p | p (Holm) |",
            "|---|---|---:|---|---:|---:|",
        ]
        for d in report.differences:
            lines.append(
                f"| {d.arm} | {d.metric} | {d.delta:+.4f} | [{d.low:+.4f}, {d.high:+.4f}] | {_p(d.p_value)} "
                f"| {_p(d.p_holm)} |"
            )
    lines += ["", "Quality per cost (per query):", ""]
    lines += quality_per_cost(report)
    lines.append("")
    if report.srm_p is not None:
        verdict = "MISMATCH: do not trust the differences" if report.srm_p < 0.001 else "ok"
        counts = ", ".join(f"{a} {n}" for a, n in report.srm_counts.items())
        lines.append(f"Sample ratio (users per arm: {counts}): chi-square p = {_p(report.srm_p)} ({verdict})")
    elif report.mode == "split":
        lines.append("Sample ratio: not checked (no experiment configuration with weights)")
    if report.ignored:
        lines.append(f"{report.ignored} logged queries of other arms or modes were left out")
    return "\n".join(lines) + "\n"


def quality_per_cost(report: Report) -> list[str]:
    """Each arm's effect against the control beside its mean cost per query."""
    costs = {a.arm: a for a in report.arms}
    control = costs.get(report.control)
    lines = [
        "| arm | effect vs control | 95% CI | cost ms | Δ ms | docs reranked | $ |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for a in report.arms:
        if a.arm == "interleaved":
            continue
        effect, ci = "(control)", ""
        if report.mode == "interleave":
            p = next((p for p in report.pairs if p.arm == a.arm and p.other == report.control), None)
            if p is not None and p.win_rate is not None:
                effect, ci = f"win rate {p.win_rate:.3f}", f"[{_num(p.low)}, {_num(p.high)}]"
        else:
            d = next((d for d in report.differences if d.arm == a.arm and d.metric == "ctr"), None)
            if d is not None:
                effect, ci = f"ΔCTR {d.delta:+.4f}", f"[{d.low:+.4f}, {d.high:+.4f}]"
        extra = a.mean_ms - control.mean_ms if control is not None else 0.0
        lines.append(
            f"| {a.arm} | {effect} | {ci} | {a.mean_ms:.1f} | {extra:+.1f} | {a.mean_docs:.1f} | {a.mean_usd:.6f} |"
        )
    return lines


def plot(report: Report, path: Path) -> Path:
    """One PNG: each arm's effect against the control, with its 95% CI, as queries accumulate."""
    figure_module = require("matplotlib.figure", "bench")
    fig = figure_module.Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    metric = "win_rate" if report.mode == "interleave" else "ctr"
    for arm in dict.fromkeys(p.arm for p in report.progress):
        pts = [p for p in report.progress if p.arm == arm]
        xs = [p.queries for p in pts]
        ax.plot(xs, [p.value for p in pts], marker="o", markersize=3, label=arm)
        ax.fill_between(xs, [p.low for p in pts], [p.high for p in pts], alpha=0.2)
    ax.axhline(0.5 if metric == "win_rate" else 0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("queries (impressions) so far")
    ax.set_ylabel(f"win rate against {report.control}" if metric == "win_rate" else f"CTR − CTR of {report.control}")
    ax.set_title(f"{report.experiment}: effect and 95% CI as impressions accumulate", fontsize=10)
    if report.progress:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def write_report(report: Report, out: Path) -> list[Path]:
    """``report.md``, ``report.json`` and ``report.png`` in ``out`` (each written atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    _atomic(out / TABLE, lambda tmp: tmp.write_text(table, encoding="utf-8"))
    data = json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
    _atomic(out / DATA, lambda tmp: tmp.write_text(data + "\n", encoding="utf-8"))
    return [out / TABLE, out / DATA, plot(report, out / PLOT)]


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o644)  # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
