"""The teacher → assistant → student chain with three teachers, each link scored against human grades.

    python -m twostage_search.benchmarks.studies.chain \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance \\
        --work var/student --graded-cache var/graded --out benchmarks/results/chain.json

Teachers, on CrowdFlower's committed query-level splits (:mod:`.student` builds the rest):

- **(a) human grades**: the assistant is the bundled ``graded`` model (fitted on all CrowdFlower train pairs
  and Home Depot train pairs), the student the one :mod:`.student` trained (``--student-a``).
- **(b) the ``lore`` LLM judge** (bundled Qwen2.5-Coder-0.5B, label-only, zero-shot) on a seeded cluster
  sample of ``--label-train`` CrowdFlower train pairs (and ``--label-test`` test pairs, to score the teacher
  itself); judgements are kept in ``--work``/``lore-crowdflower.jsonl`` (``--label-only`` fills it and stops).
- **(c) the zero-shot MS MARCO cross-encoder** (bundled MiniLM-L12 INT8, query + title): its logit on the same
  sample.

A teacher's labels become grades as :func:`~twostage_search.benchmarks.chain_links.teacher_grades` says (its
hard grades if all four occur, else its score — E[L] for the LLM — cut at the quantiles of the dev grade
mix). The assistant of (b) and (c) is the bundled model's recipe (same nine features, ordinal model, E[grade]
cut by dev thresholds) fitted on the sample's teacher grades; a fourth, ``a@sample``, fits the human grades
of the same sample, so (a), (b) and (c) can be compared at one sample size. Each student is
all-MiniLM-L6-v2 trained exactly as :mod:`.student` trains (assistant E[grade] over BM25 top ``--depth`` of
the CrowdFlower and Home Depot train queries, MarginMSE, the same seeded triples, ``--grid``'s first setting).

Scored on CrowdFlower test: agreement (Acc@4, Acc@2, Macro-F1, κ, linear and quadratic κ) of each teacher,
assistant and student with the human grades, on every test pair and on the labelled test sample (a dense
model's cosine is cut into grades by thresholds fitted on the dev pairs); nDCG@10 of the assistants (reranking
BM25's top ``--rerank-depth``) and the students (``dense-flat``) beside BM25, bge-small and the untrained
all-MiniLM-L6-v2, with paired randomisation tests (Holm over each table) and bootstrap CIs; Home Depot's test
queries with ``--homedepot-eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.chain_links import (
    TeacherGrades,
    fit_assistant,
    mix_thresholds,
    teacher_grades,
)
from twostage_search.benchmarks.evaluation import machine
from twostage_search.benchmarks.graded import GradedPair, apply_thresholds, fit_thresholds
from twostage_search.benchmarks.graded_data import features, fill, open_caches
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies import student as st
from twostage_search.benchmarks.studies import student_data as sd
from twostage_search.benchmarks.studies.chain_scores import (
    TEACHERS,
    FittedAssistant,
    agreement_rows,
    index_name,
    rankings_table,
)
from twostage_search.engine.atomic import atomic_write_text
from twostage_search.engine.dense_train import MarginTriple, StudentConfig, train_student
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging, verbosity
from twostage_search.rerankers.ordinal import OrdinalModel

log = logging.getLogger(__name__)


def lore_rows(args: argparse.Namespace, data: sd.Data, pairs: Sequence[GradedPair]) -> list[dict[str, Any]]:
    """The LLM judge's judgement rows for ``pairs`` (from the store under ``--work``, else judged now)."""
    from twostage_search.benchmarks.studies.judges import JudgementStore, run_lore
    from twostage_search.rerankers.llm.lore import JudgementCache, LoreReranker

    judge = LoreReranker("llama-cpp", cache=JudgementCache(0), backend_options={"threads": args.threads})
    rows, spent = run_lore(data.graded, pairs, judge, JudgementStore(args.work / "lore-crowdflower.jsonl"))
    log.info("lore: %d pairs (%.0fs judging new ones)", len(rows), spent)
    return rows


def student_triples(args: argparse.Namespace, sets: Sequence[sd.Data], assistant: sd.Assistant) -> list[MarginTriple]:
    """:mod:`.student`'s triples (same candidates, pairs and subsample) with ``assistant``'s margins."""
    triples: list[MarginTriple] = []
    for data in sets:
        whole = st.bm25_index(list(data.corpus.values()), args.work / data.name / "bm25-all")
        tops = st.bm25_top(whole.retriever(), data, data.graded.splits["train"], args.depth)
        triples += st.triples_of(data, tops, assistant.scores(data, tops), args.pairs_per_query)
    if len(triples) > args.max_triples:
        triples = random.Random(sd.SEED).sample(triples, args.max_triples)
    return triples


def train_or_load(
    args: argparse.Namespace, sets: Sequence[sd.Data], teacher: str, assistant: sd.Assistant
) -> dict[str, Any]:
    """The student of ``teacher``'s assistant (trained unless its directory holds a finished model)."""
    lr, epochs = st.parse_grid(args.grid)[0]
    path = args.work / "models" / f"chain-{teacher}-lr{lr:g}-ep{epochs}"
    fitted = json.loads(json.dumps(assistant.model.model.to_json()))  # as training.json holds it
    done = path / "training.json"
    if done.is_file() and json.loads(done.read_text())["triples_source"].get("assistant_model") != fitted:
        log.warning("%s was trained on another assistant: training it again", path)
    if not done.is_file() or json.loads(done.read_text())["triples_source"].get("assistant_model") != fitted:
        triples = student_triples(args, sets, assistant)
        config = StudentConfig(epochs=epochs, learning_rate=lr, batch_size=args.batch_size, max_length=args.max_length)
        provenance: dict[str, Any] = {"assistant": f"graded recipe on teacher ({teacher})", "assistant_model": fitted}
        provenance["load_before"] = os.getloadavg()[0]
        train_student(triples, path, config, provenance=provenance)
        record = json.loads((path / "training.json").read_text())
        record["triples_source"]["load_after"] = os.getloadavg()[0]
        atomic_write_text(path / "training.json", json.dumps(record, indent=2) + "\n")
    record = json.loads((path / "training.json").read_text())
    return {"dir": str(path), **record}


# ------------------------------------------------------------------------------------------ the run
def study(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.dense import create_dense_encoder
    from twostage_search.rerankers.graded import DEFAULT_GRADED_MODEL, GradedReranker, load_graded_model

    hd_sizes = {"train": args.hd_train, "dev": args.hd_dev, "test": args.hd_test}
    cf = sd.load_data(args.crowdflower, None, args.extra)
    g = cf.graded
    sample = g.sample("train", args.label_train)
    llm_sample = g.sample("train", args.llm_train or args.label_train)
    test_sample = g.sample("test", args.label_test) if args.label_test else []
    teachers = args.teachers.split(",")
    lore_train = lore_rows(args, cf, llm_sample) if "b" in teachers else []
    lore_test = lore_rows(args, cf, test_sample) if "b" in teachers and args.label_test else []
    if args.label_only:
        return {}
    hd = sd.load_data(args.homedepot, hd_sizes, args.extra, args.hd_train_first, st.HD_CUT)
    splits = {s: g.pairs(s) for s in ("train", "dev", "test")}
    caches = open_caches(args.graded_cache, "crowdflower", ("ce",))
    bundled = load_graded_model(DEFAULT_GRADED_MODEL)
    probe = GradedReranker(bundled, threads=args.threads)
    rows: dict[tuple[str, str], Mapping[str, float]] = {}
    for pairs in splits.values():
        fill(g, pairs, caches, probe)
        rows |= {(p.query_id, p.doc_id): r for p, r in zip(pairs, features(g, pairs, caches), strict=True)}
    ce = caches["ce"].values
    scale = g.grades
    dev_mix = [p.grade for p in splits["dev"]]
    from twostage_search.benchmarks.studies.judges import lore_grades

    # ---- teachers on the labelled train sample, and the assistants fitted on them
    labelled = {
        "a": (sample, TeacherGrades([p.grade for p in sample], "human grades")),
        "c": (sample, teacher_grades([ce[(p.query_id, p.doc_id)] for p in sample], None, dev_mix, scale)),
    }
    if "b" in teachers:
        soft = [r["expected"] for r in lore_train]
        labelled["b"] = (llm_sample, teacher_grades(soft, lore_grades(g, lore_train), dev_mix, scale))
        if len(llm_sample) < len(sample):  # human grades of the LLM's pairs: (a) at (b)'s sample size
            labelled["a@llm-sample"] = (llm_sample, TeacherGrades([p.grade for p in llm_sample], "human grades"))
    lore_counts = {str(k): lore_grades(g, lore_train).count(k) for k in scale}
    dev_rows = [rows[(p.query_id, p.doc_id)] for p in splits["dev"]]
    assistants: dict[str, OrdinalModel] = {"a": bundled}
    for t, (pairs, tg) in labelled.items():
        meta = {"teacher": TEACHERS[t[0]], "teacher_rule": tg.rule, "train_pairs": len(pairs)}
        x = [rows[(p.query_id, p.doc_id)] for p in pairs]
        try:
            model = fit_assistant(bundled.features, x, tg.grades, dev_rows, dev_mix, scale, meta)
        except InputError as exc:  # e.g. a grade missing from a small sample's human grades
            log.warning("assistant %s not fitted: %s", t, exc)
            continue
        model.save(args.work / "assistants" / t / "model.json")
        assistants[t if t != "a" else "a@sample"] = model

    # ---- students
    students = {"a": {"dir": str(args.student_a), **json.loads((args.student_a / "training.json").read_text())}}
    for t in (t for t in ("b", "c") if t in teachers):
        students[t] = train_or_load(args, [cf, hd], t, FittedAssistant(args.work, assistants[t]))
    if args.train_only:
        return {}
    encoders = {
        "bge-small": create_dense_encoder(max_length=args.max_length),
        "minilm-untrained": create_dense_encoder("sentence-transformers", model="bundled:minilm-l6", max_length=32),
    }
    for t, record in students.items():
        encoders[f"student-{t}"] = create_dense_encoder(
            "sentence-transformers", model=record["dir"], max_length=args.max_length
        )

    # ---- agreement on CrowdFlower test (all pairs, and the LLM-labelled sample)
    def teacher_labels(pairs: Sequence[GradedPair]) -> dict[str, dict[str, list[int]]]:
        cuts = mix_thresholds([ce[(p.query_id, p.doc_id)] for p in sample], dev_mix, scale)
        logits = [ce[(p.query_id, p.doc_id)] for p in pairs]
        dev_cuts = fit_thresholds([ce[(p.query_id, p.doc_id)] for p in splits["dev"]], dev_mix, scale)
        out = {
            "c": {
                "logit, cut at its train-sample quantiles of the dev grade mix": apply_thresholds(logits, cuts, scale),
                "logit, dev thresholds": apply_thresholds(logits, dev_cuts, scale),
            }
        }
        if {(p.query_id, p.doc_id) for p in pairs} <= {(p.query_id, p.doc_id) for p in test_sample}:
            by = {(r["query_id"], r["doc_id"]): r for r in lore_test}
            chosen = [by[(p.query_id, p.doc_id)] for p in pairs]
            soft = mix_thresholds([r["expected"] for r in lore_train], dev_mix, scale)
            out["b"] = {
                "hard label": lore_grades(g, chosen),
                "E[L], cut at its train-sample quantiles of the dev grade mix": apply_thresholds(
                    [r["expected"] for r in chosen], soft, scale
                ),
            }
        return out

    docs = [cf.corpus[d] for d in cf.eval_ids]
    dense = {}
    for name, encoder in encoders.items():
        key = name.removeprefix("student-")
        dense[key] = (st.dense_index(docs, args.work / cf.name / f"dense-{index_name(name, args)}", encoder), encoder)
    on = {"test (all pairs)": splits["test"]}
    if lore_test:
        on[f"test sample ({len(test_sample)} LLM-labelled pairs)"] = test_sample
    agreement = {
        label: agreement_rows(cf, {"dev": splits["dev"], "test": pairs}, teacher_labels, assistants, dense, rows)
        for label, pairs in on.items()
    }
    # ---- rankings
    results = {}
    for data in [cf, hd] if args.homedepot_eval else [cf]:
        bm25 = st.bm25_index([data.corpus[d] for d in data.eval_ids], args.work / data.name / "bm25")
        chosen: dict[str, OrdinalModel] = {t: assistants[t] for t in ("a", "b", "c") if t in assistants}
        results[data.name] = rankings_table(args, data, chosen, encoders, bm25)
    return {
        "teachers": TEACHERS,
        "label_sample": {"train_pairs": len(sample), "test_pairs": len(test_sample), "per_query": 10, "seed": 13},
        "lore_train_label_counts": lore_counts,
        "teacher_rules": {
            t: {"train_pairs": len(pairs), "rule": tg.rule, "thresholds": tg.thresholds}
            for t, (pairs, tg) in labelled.items()
        },
        "assistants": {t: m.to_json() for t, m in assistants.items()},
        "students": students,
        "agreement_crowdflower": agreement,
        "ndcg10": results,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(),
    }


# ------------------------------------------------------------------------------------------ report
def table(report: Mapping[str, Any]) -> str:
    if not report:
        return "done (--label-only or --train-only)\n"
    lines = []
    for split, rows in report["agreement_crowdflower"].items():
        lines += [
            f"\nCrowdFlower {split}: agreement with human grades",
            "| link | teacher | grader | pairs | Acc@4 | Acc@2 | Macro-F1@4 | κ | κ linear | κ quadratic |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['link']} | {r['teacher']} | {r['grader']} | {r['pairs']} | {r['acc@4']:.3f} | {r['acc@2']:.3f} "
                f"| {r['macro_f1@4']:.3f} | {r['kappa']:.3f} | {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} |"
            )
    for name, res in report["ndcg10"].items():
        comp = {(c["system"], c["baseline"]): c for c in res["comparisons"]}
        lines += [
            f"\n{name}: {res['queries']} test queries, {res['corpus']} documents",
            "| system | nDCG@10 | Δ vs BM25 [95% CI] (Holm p) | Δ vs bge-small | Δ vs untrained MiniLM |",
            "|---|---|---|---|---|",
        ]
        for s, v in res["ndcg10"].items():
            cells = []
            for b in ("bm25", "bge-small", "minilm-untrained"):
                c = comp.get((s, b))
                cells.append(
                    "–"
                    if c is None
                    else f"{c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] ({c['p_holm']:.3g})"
                )
            lines.append(f"| {s} | {v:.3f} | {' | '.join(cells)} |")
    lines += [
        "\nstudent training (MarginMSE, CPU)",
        "| teacher | triples | train s | train loss | load before → after |",
        "|---|---|---|---|---|",
    ]
    for t, rec in report["students"].items():
        src = rec.get("triples_source", {})
        load = f"{src['load_before']:.1f} → {src['load_after']:.1f}" if "load_after" in src else "not recorded"
        lines.append(f"| {t} | {rec['triples']} | {rec['train_seconds']} | {rec['train_loss']} | {load} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = st.parser()
    p.prog = "python -m twostage_search.benchmarks.studies.chain"
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(work=Path("var/student"))
    p.add_argument("--graded-cache", type=Path, default=Path("var/graded"), help="CrowdFlower logits of every pair")
    p.add_argument(
        "--student-a",
        type=Path,
        default=Path("var/student/models/minilm-l6-lr0.0002-ep1"),
        help="the student of teacher (a), trained by the student study",
    )
    p.add_argument("--label-train", type=int, default=300, help="CrowdFlower train pairs the LLM labels")
    p.add_argument("--label-test", type=int, default=100, help="CrowdFlower test pairs the LLM labels")
    p.add_argument("--llm-train", type=int, default=None, help="of which the LLM labels the first N (default all)")
    p.add_argument("--teachers", default="a,b,c", help="teachers whose links are built (a is always scored)")
    p.add_argument("--label-only", action="store_true", help="only fill the LLM judgement store, then stop")
    p.add_argument("--train-only", action="store_true", help="stop once the students are trained")
    p.add_argument("--homedepot-eval", action="store_true", help="nDCG@10 on Home Depot test queries too")
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(verbosity(args, default=1))
    return run_study(args, study, table)


if __name__ == "__main__":
    raise SystemExit(main())
