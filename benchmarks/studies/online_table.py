"""The Markdown table of :mod:`twostage_search.benchmarks.studies.online_sim`'s report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["markdown", "needed_text", "ratio_text"]

METHODS = ("A/B CTR", "A/B MRR", "interleaving")
MARK = {True: "agrees", False: "**disagrees**", None: "none"}


def needed_text(n: int | None, largest: int) -> str:
    """Impressions needed, or ``> largest`` when no size of the grid reached the power."""
    return f"> {largest:,}" if n is None else f"{n:,}"


def ratio_text(ab: int | None, tdi: int | None, largest: int) -> str:
    """A/B impressions ÷ interleaving impressions; a bound when A/B never got there, n/a when interleaving didn't."""
    if tdi is None:
        return "n/a"
    if ab is None:
        return f"> {largest / tdi:.0f}×"
    return f"{ab / tdi:.1f}×" if ab / tdi < 10 else f"{ab / tdi:.0f}×"


def markdown(report: Mapping[str, Any]) -> str:
    """The report's table: one row per arm pair and click model."""
    grid = report["grid"]
    largest = max(grid["sizes"])
    lines = [
        f"Dataset `{report['dataset']}` ({report['queries']} queries), index `{report['index']}`, "
        f"experiment `{report['experiment']}`; top {report['k']} shown; {grid['runs']} simulated experiments "
        f"per size ({', '.join(f'{n:,}' for n in grid['sizes'])} impressions); impressions needed for "
        f"{grid['power']:.0%} power at p < {grid['alpha']} in the direction of the offline nDCG@10 difference.",
        "",
        "| A → B | click model | nDCG@10 A → B | E[ΔCTR] | A/B CTR | A/B MRR | interleaving | CTR ÷ TDI | "
        "MRR ÷ TDI | verdict vs nDCG (CTR / MRR / TDI) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["rows"]:
        m = row["methods"]
        ctr, mrr, tdi = (m[name]["needed"] for name in METHODS)
        verdicts = " / ".join(MARK[m[name]["agrees_with_ndcg"]] for name in METHODS)
        lines.append(
            f"| {row['a']} → {row['b']} | {row['model']} | {row['ndcg10_a']:.3f} → {row['ndcg10_b']:.3f} "
            f"({row['ndcg10_delta']:+.3f}) | {row['expected_ctr_delta']:+.4f} | {needed_text(ctr, largest)} | "
            f"{needed_text(mrr, largest)} | {needed_text(tdi, largest)} | {ratio_text(ctr, tdi, largest)} | "
            f"{ratio_text(mrr, tdi, largest)} | {verdicts} |"
        )
    lines += [
        "",
        "A/B: users split 50/50, one impression each; CTR by a pooled two-proportion z-test, MRR (1/rank of the "
        "first click, 0 without one) by Welch's t-test. Interleaving (TDI): team-draft, one impression per query, "
        "binomial sign test on wins and losses. E[ΔCTR]: the exact expected CTR difference (B − A) under the "
        "click model. Verdict: the direction in which at least half of the runs were significant at the largest "
        "size (none: neither direction).",
    ]
    return "\n".join(lines) + "\n"
