"""The scoring of the chain study's links (:mod:`.chain`): each link's agreement with human grades, and nDCG@10 of
the assistants and the students beside BM25 and the dense baselines."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.chain_links import agreement_row, dense_scores
from twostage_search.benchmarks.evaluation import compare, mean, ranked
from twostage_search.benchmarks.graded import GradedPair, apply_thresholds, fit_thresholds
from twostage_search.benchmarks.studies import student as st
from twostage_search.benchmarks.studies import student_data as sd
from twostage_search.rerankers.ordinal import OrdinalModel

TEACHERS = {
    "a": "human grades",
    "b": "lore LLM judge (Qwen2.5-Coder-0.5B, label-only)",
    "c": "MS MARCO cross-encoder logit (zero-shot)",
}


class FittedAssistant(sd.Assistant):
    """:class:`.student_data.Assistant` with a given ordinal model instead of the bundled one."""

    def __init__(self, cache: Path, model: OrdinalModel) -> None:
        super().__init__(cache, "graded", graded_model=model)


def agreement_rows(
    data: sd.Data,
    splits: Mapping[str, Sequence[GradedPair]],
    teachers: Callable[[Sequence[GradedPair]], dict[str, dict[str, list[int]]]],
    assistants: Mapping[str, Any],
    dense: Mapping[str, tuple[Any, Any]],
    rows: Mapping[tuple[str, str], Mapping[str, float]],
) -> list[dict[str, Any]]:
    """One agreement row per link on ``splits['test']`` (each link's grades as :mod:`.chain` says)."""
    g = data.graded
    scale, cut = g.grades, g.cut
    test, dev = splits["test"], splits["dev"]
    human = [p.grade for p in test]
    out: list[dict[str, Any]] = []
    for t, graders in teachers(test).items():
        for name, labels in graders.items():
            out.append(agreement_row(human, labels, scale, cut, link="teacher", teacher=t, grader=name))
    for t, model in assistants.items():
        labels = model.grade(model.matrix([rows[(p.query_id, p.doc_id)] for p in test]))
        out.append(agreement_row(human, labels, scale, cut, link="assistant", teacher=t, grader="dev thresholds"))
    for t, (index, encoder) in dense.items():
        cuts = fit_thresholds(dense_scores(index, encoder, data.graded.queries, dev), [p.grade for p in dev], scale)
        labels = apply_thresholds(dense_scores(index, encoder, data.graded.queries, test), cuts, scale)
        link = "student" if t in TEACHERS else "dense baseline"
        out.append(agreement_row(human, labels, scale, cut, link=link, teacher=t, grader="cosine, dev thresholds"))
    return out


def rankings_table(
    args: argparse.Namespace,
    data: sd.Data,
    assistants: Mapping[str, OrdinalModel],
    encoders: Mapping[str, Any],
    bm25: Any,
) -> dict[str, Any]:
    """nDCG@10 on ``data``'s test queries for BM25, the dense models and the assistants, with paired tests."""
    docs = [data.corpus[d] for d in data.eval_ids]
    qids = data.graded.splits["test"]
    rankings = {"bm25": st.run(bm25.retriever(), data, qids)[0]}
    for name, encoder in encoders.items():
        index = st.dense_index(docs, args.work / data.name / f"dense-{index_name(name, args)}", encoder)
        rankings[name] = st.run(index.retriever(encoder), data, qids)[0]
    tops = st.bm25_top(bm25.retriever(), data, qids, args.rerank_depth)
    for t, model in assistants.items():
        scores = FittedAssistant(args.work, model).scores(data, tops)
        rankings[f"assistant-{t}"] = {q: ranked(zip(tops[q], scores[q], strict=True))[:10] for q in qids}
    per_query = {name: st.ndcg(data, qids, r) for name, r in rankings.items()}
    base = ("bm25", "bge-small", "minilm-untrained")
    pairs = [(s, b) for s in per_query for b in base if s != b and (b != "minilm-untrained" or "student" in s)]
    stats = compare([(per_query[s], per_query[b]) for s, b in pairs])
    return {
        "queries": len(qids),
        "corpus": len(docs),
        "ndcg10": {s: round(mean(v), 4) for s, v in per_query.items()},
        "comparisons": [{"system": s, "baseline": b, **c.as_dict()} for (s, b), c in zip(pairs, stats, strict=True)],
    }


def index_name(system: str, args: argparse.Namespace) -> str:
    lr, epochs = st.parse_grid(args.grid)[0]
    return str(
        {
            "student-a": args.student_a.name,
            "student-b": f"chain-b-lr{lr:g}-ep{epochs}",
            "student-c": f"chain-c-lr{lr:g}-ep{epochs}",
        }.get(system, system)
    )
