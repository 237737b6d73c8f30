"""The student link of the teacher → assistant → student chain: a bi-encoder trained on the assistant's scores.

    python -m twostage_search.benchmarks.studies.student \\
        --crowdflower ../shared/datasets/crowdflower-search-relevance \\
        --homedepot ../shared/datasets/homedepot-search-relevance \\
        --work var/student --out benchmarks/results/student.json

1. **Assistant**: the ``graded`` reranker (``bundled:graded-crowdflower``: the ordinal model over the MS MARCO
   MiniLM-L12 INT8 logit of (query, title) and lexical features, fitted on CrowdFlower + Home Depot train
   queries). Its score of a pair is the expected grade E[grade] among the query's candidates. ``--assistant
   graded-ce``: the cross-encoder fine-tuned on those grades (``bundled:graded-ce-crowdflower``), its E[grade].
2. **Candidates**: BM25 (``lucene-bm25``) top ``--depth`` of each *train* query of the committed query-level
   splits (``benchmarks/data/splits``), over each dataset's whole corpus; Home Depot train queries are the
   first ``--hd-train-first`` by id of the seeded ``--hd-train`` subsample the graded model was fitted on. The
   assistant's logits are cached under ``--work`` (reruns are cheap; ``--prefill`` in a second process fills
   the test step's caches while the first trains).
3. **Student**: all-MiniLM-L6-v2 (``bundled:minilm-l6``; ``--base-model``: another sentence-transformers
   model, or ``onnx:SPEC`` for a dense ONNX model turned into one, e.g. ``onnx:bundled:bge-small-en-int8``,
   bge-small itself, CLS pooling, no query prefix) trained with MarginMSE
   (:func:`~twostage_search.engine.dense_train.train_student`) on up to ``--pairs-per-query`` candidate pairs of
   each query, margin = (E[grade](a) − E[grade](b)) / 3, at most ``--max-triples`` triples (seeded subsample).
   Each ``--grid`` setting (``LR:EPOCHS``) is trained; the one with the best mean dev nDCG@10 over the two
   datasets is kept (dev queries only; test is never looked at to choose). The default grid is one setting
   (2e-4, one epoch): on 2 shared cores a second setting did not fit; give more to choose among them.
4. **Test**: nDCG@10 on the test queries (Home Depot: a seeded subsample, ``--hd-test``) for BM25, bge-small
   zero-shot (``dense-flat`` default encoder), the default hybrid (BM25 ×1 + dense ×2, min-max fusion), the
   assistant reranking BM25's top ``--rerank-depth``, the student's base model untrained, and the student
   (``dense-flat`` with the ``sentence-transformers`` encoder) alone and in the hybrid; paired randomisation
   tests against BM25 and bge-small (and the student against its untrained base), Holm-corrected over each
   dataset's table, paired bootstrap 95% CIs; milliseconds per query. The trials' dev nDCG@10 is reported
   beside that of bge-small and the untrained base on the same dev queries (read only, choosing nothing).

Gains are grade − 1 (the lowest grade means irrelevant on both scales); unjudged items count as irrelevant.
Corpus (the same for every system of a dataset): the items judged for the dev and test queries plus a seeded
sample of ``--extra`` other items (not all 9,913 CrowdFlower products and 54,667 Home Depot titles: encoding
them with each model costs too long on 2 shared CPU cores). Documents are title + description cut to
``--max-length`` tokens for every dense encoder. Training is sized for 2 shared cores too (``--max-triples``
triples, one epoch per setting): the student is a small-sample distillation, not a converged model.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean, ranked
from twostage_search.benchmarks.studies.student_data import ASSISTANTS, SEED, Assistant, Data, load_data
from twostage_search.engine.dense_train import MarginTriple, StudentConfig, margin_triples, train_student
from twostage_search.engine.errors import InputError, TwoStageError, exit_status
from twostage_search.engine.logs import add_verbosity_arguments, setup_logging, verbosity
from twostage_search.engine.types import Document
from twostage_search.rerankers.onnx_to_torch import sentence_transformer_from_onnx

log = logging.getLogger(__name__)

HD_CUT = 3  # Home Depot's relevant cut, as the graded model's study uses (only the sampling needs one here)
SCALE = 1 / 3  # E[grade] spans 1–4: margins fall in [0, 1], the range of a cosine difference's useful part
ZERO_SHOT = ("bm25", "bge-small", "hybrid", "untrained")  # untrained: the student's base model
IN_DOMAIN = ("assistant", "student", "student-hybrid")


def gains(data: Data) -> dict[str, dict[str, int]]:
    low = min(data.graded.grades)
    return {q: {d: g - low for d, g in docs.items()} for q, docs in data.graded.qrels.items()}


# ------------------------------------------------------------------------------------- indexes
def bm25_index(docs: Sequence[Document], path: Path) -> Any:
    from twostage_search import indexes
    from twostage_search.indexes.lucene_bm25 import LuceneBM25Index

    if (path / "meta.json").is_file() and len(index := indexes.load(path)) == len(docs):
        return index
    return LuceneBM25Index.build(docs, path, progress=False)


def dense_index(docs: Sequence[Document], path: Path, encoder: Any) -> Any:
    from twostage_search import indexes
    from twostage_search.indexes.dense import DenseFlatIndex

    if (path / "meta.json").is_file():
        index = indexes.load(path)
        if index.meta["encoder"] == encoder.config() and index.doc_ids == [d.doc_id for d in docs]:
            return index
    started = time.perf_counter()
    index = DenseFlatIndex.build(docs, path, encoder=encoder, progress=False)
    log.info("encoded %d docs into %s in %.0fs", len(docs), path, time.perf_counter() - started)
    return index


def hybrid_index(bm25: Any, dense: Any, path: Path) -> Any:
    from twostage_search.indexes.hybrid import DEFAULT_WEIGHTS, Component, HybridIndex

    parts = [Component("bm25", str(bm25.path), DEFAULT_WEIGHTS["bm25"]), Component("dense", str(dense.path), 2.0)]
    return HybridIndex.compose(path, parts)


def bm25_top(retriever: Any, data: Data, qids: Sequence[str], depth: int) -> dict[str, list[str]]:
    return {q: [c.doc_id for c in retriever.retrieve(data.graded.queries[q], depth)] for q in qids}


def triples_of(
    data: Data, tops: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]], per_query: int
) -> list[MarginTriple]:
    rng = random.Random(SEED)
    out: list[MarginTriple] = []
    for q in sorted(tops):
        scored = [(data.corpus[d].full_text, s) for d, s in zip(tops[q], scores[q], strict=True)]
        out += margin_triples(data.graded.queries[q].text, scored, pairs=per_query, scale=SCALE, rng=rng)
    return out


# ---------------------------------------------------------------------------------------- runs
def run(
    retriever: Any, data: Data, qids: Sequence[str], k: int = 10
) -> tuple[dict[str, list[tuple[str, float]]], float]:
    """Rankings of ``qids`` and the mean milliseconds per query."""
    out, started = {}, time.perf_counter()
    for q in qids:
        out[q] = ranked((c.doc_id, c.score) for c in retriever.retrieve(data.graded.queries[q], k))
    return out, (time.perf_counter() - started) * 1000 / max(len(qids), 1)


def ndcg(data: Data, qids: Sequence[str], rankings: Mapping[str, Sequence[tuple[str, float]]]) -> list[float]:
    return evaluate(gains(data), qids, rankings, ["nDCG@10"], drop_query_id=False)["nDCG@10"]


def parse_grid(text: str) -> list[tuple[float, int]]:
    try:
        return [(float(lr), int(ep)) for lr, _, ep in (item.partition(":") for item in text.split(","))]
    except ValueError:
        raise InputError(f"--grid takes LR:EPOCHS[,LR:EPOCHS...], got {text!r}") from None


def student_base(spec: str, work: Path) -> tuple[str, str]:
    """The sentence-transformers model a student starts from, and a short label for its trials' names:
    ``onnx:SPEC`` is a dense ONNX model turned into one under ``work/base``; anything else is passed on."""
    if spec.startswith("onnx:"):
        onnx_spec = spec.removeprefix("onnx:")
        label = Path(onnx_spec.removeprefix("bundled:")).name.removesuffix("-int8")
        return str(sentence_transformer_from_onnx(onnx_spec, work / "base" / label)), label
    return spec, Path(spec.removeprefix("bundled:")).name


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_verbosity_arguments(p)
    p.add_argument("--crowdflower", type=Path, required=True)
    p.add_argument("--homedepot", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("var/student"), help="indexes, logit cache and models")
    p.add_argument("--out", type=Path, default=None, help="JSON report")
    p.add_argument("--depth", type=int, default=20, help="BM25 candidates per train query (default 20)")
    p.add_argument("--pairs-per-query", type=int, default=8)
    p.add_argument("--max-triples", type=int, default=480)
    p.add_argument("--assistant", choices=ASSISTANTS, default="graded", help="whose E[grade] the student learns")
    p.add_argument(
        "--base-model", default="bundled:minilm-l6", help="the student's start (onnx:SPEC: a dense ONNX model)"
    )
    p.add_argument("--grid", default="2e-4:1", help="LR:EPOCHS settings tried, the best on dev kept")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=32, help="tokens per document, every dense encoder")
    p.add_argument("--hd-train", type=int, default=600, help="Home Depot train queries (seeded subsample)")
    p.add_argument("--hd-train-first", type=int, default=220, help="of which the first N by query id are used")
    p.add_argument("--hd-dev", type=int, default=200)
    p.add_argument("--hd-test", type=int, default=300)
    p.add_argument("--extra", type=int, default=300, help="items added to the dev and test queries' judged ones")
    p.add_argument("--rerank-depth", type=int, default=10, help="BM25 candidates the assistant reranks")
    p.add_argument("--prefill", action="store_true", help="only fill the test step's caches (run beside training)")
    p.add_argument("--cost-queries", type=int, default=20, help="test queries the assistant's cost is timed on")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(verbosity(args, default=1))
    try:
        report = study(args)
    except TwoStageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_status(exc)
    if args.prefill:
        return 0
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(table(report))
    return 0


def prefill(args: argparse.Namespace, sets: Sequence[Data], assistant: Assistant) -> None:
    """Fill the caches the test step reads (the assistant's logits of the test candidates, the bge-small
    indexes), so that a second process can do it while the first trains."""
    from twostage_search.engine.dense import create_dense_encoder

    bge = create_dense_encoder(max_length=args.max_length)
    for data in sets:
        docs = [data.corpus[d] for d in data.eval_ids]
        base = bm25_index(docs, args.work / data.name / "bm25")
        assistant.scores(data, bm25_top(base.retriever(), data, data.graded.splits["test"], args.rerank_depth))
        dense_index(docs, args.work / data.name / "dense-bge-small", bge)


def study(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.dense import create_dense_encoder

    work: Path = args.work
    hd_sizes = {"train": args.hd_train, "dev": args.hd_dev, "test": args.hd_test}
    sets = [
        load_data(args.crowdflower, None, args.extra),
        load_data(args.homedepot, hd_sizes, args.extra, args.hd_train_first, HD_CUT),
    ]
    assistant = Assistant(work, args.assistant)
    if args.prefill:
        prefill(args, sets, assistant)
        return {}
    bm25: dict[str, Any] = {}
    triples: list[MarginTriple] = []
    started = time.perf_counter()
    for data in sets:
        whole = bm25_index(list(data.corpus.values()), work / data.name / "bm25-all")
        tops = bm25_top(whole.retriever(), data, data.graded.splits["train"], args.depth)
        triples += triples_of(data, tops, assistant.scores(data, tops), args.pairs_per_query)
        bm25[data.name] = bm25_index([data.corpus[d] for d in data.eval_ids], work / data.name / "bm25")
    assistant_seconds = time.perf_counter() - started
    if len(triples) > args.max_triples:
        triples = random.Random(SEED).sample(triples, args.max_triples)
    # ---- students, one per grid setting, chosen on dev
    base_model, base_label = student_base(args.base_model, work)
    trials = []
    for lr, epochs in parse_grid(args.grid):
        name = f"{base_label}-lr{lr:g}-ep{epochs}"
        path = work / "models" / name
        if (path / "training.json").is_file():
            record = json.loads((path / "training.json").read_text())
        else:
            config = StudentConfig(
                base_model=base_model,
                epochs=epochs,
                learning_rate=lr,
                batch_size=args.batch_size,
                max_length=args.max_length,
            )
            record = train_student(
                triples, path, config, provenance={"assistant": args.assistant, "datasets": [d.name for d in sets]}
            ).record
        encoder = create_dense_encoder("sentence-transformers", model=str(path), max_length=args.max_length)
        dev = {}
        for data in sets:
            index = dense_index([data.corpus[d] for d in data.eval_ids], work / data.name / f"dense-{name}", encoder)
            qids = data.graded.splits["dev"]
            dev[data.name] = round(mean(ndcg(data, qids, run(index.retriever(encoder), data, qids)[0])), 4)
        trials.append(
            {
                "name": name,
                "lr": lr,
                "epochs": epochs,
                "dev_ndcg10": dev,
                "train_seconds": record["train_seconds"],
                "triples": record["triples"],
            }
        )
        log.info("%s: dev nDCG@10 %s (trained in %ss)", name, dev, record["train_seconds"])
    best = max(trials, key=lambda t: mean(list(t["dev_ndcg10"].values())))
    student_dir = work / "models" / best["name"]
    bge = create_dense_encoder(max_length=args.max_length)
    untrained = create_dense_encoder("sentence-transformers", model=base_model, max_length=args.max_length)
    # for reading the trials only (the zero-shot models on the same dev queries); chooses nothing
    reference_dev: dict[str, dict[str, float]] = {"bge-small": {}, "untrained": {}}
    for data in sets:
        for name, encoder in (("bge-small", bge), ("untrained", untrained)):
            path = work / data.name / ("dense-bge-small" if name == "bge-small" else f"dense-{base_label}")
            index = dense_index([data.corpus[d] for d in data.eval_ids], path, encoder)
            qids = data.graded.splits["dev"]
            reference_dev[name][data.name] = round(
                mean(ndcg(data, qids, run(index.retriever(encoder), data, qids)[0])), 4
            )
    # ---- test
    student = create_dense_encoder("sentence-transformers", model=str(student_dir), max_length=args.max_length)
    results: dict[str, Any] = {}
    for data in sets:
        docs = [data.corpus[d] for d in data.eval_ids]
        qids = data.graded.splits["test"]
        base = bm25[data.name]
        bge_index = dense_index(docs, work / data.name / "dense-bge-small", bge)
        student_index = dense_index(docs, work / data.name / f"dense-{best['name']}", student)
        untrained_index = dense_index(docs, work / data.name / f"dense-{base_label}", untrained)
        systems = {
            "bm25": base.retriever(),
            "bge-small": bge_index.retriever(bge),
            "hybrid": hybrid_index(base, bge_index, work / data.name / "hybrid-bge-small").retriever(bge),
            "untrained": untrained_index.retriever(untrained),
            "student": student_index.retriever(student),
            "student-hybrid": hybrid_index(base, student_index, work / data.name / "hybrid-student").retriever(student),
        }
        rankings, ms = {}, {}
        for name, retriever in systems.items():
            rankings[name], ms[name] = run(retriever, data, qids)
        tops = bm25_top(base.retriever(), data, qids, args.rerank_depth)
        scores = assistant.scores(data, tops)
        rankings["assistant"] = {q: ranked(zip(tops[q], scores[q], strict=True))[:10] for q in qids}
        ms["assistant"] = ms["bm25"] + assistant.ms_per_query(data, tops, qids[: args.cost_queries])
        per_query = {name: ndcg(data, qids, r) for name, r in rankings.items()}
        order = [*ZERO_SHOT, *IN_DOMAIN]
        pairs = [(s, b) for s in order for b in ("bm25", "bge-small") if s != b] + [("student", "untrained")]
        stats = compare([(per_query[s], per_query[b]) for s, b in pairs])
        results[data.name] = {
            "queries": len(qids),
            "corpus": len(docs),
            "systems": {
                s: {
                    "ndcg10": round(mean(per_query[s]), 4),
                    "ms_per_query": round(ms[s], 1),
                    "in_domain": s in IN_DOMAIN,
                }
                for s in order
            },
            "comparisons": [
                {"system": s, "baseline": b, **c.as_dict()} for (s, b), c in zip(pairs, stats, strict=True)
            ],
        }
    return {
        "assistant": f"{args.assistant} (bundled:{args.assistant}-crowdflower), E[grade] over BM25 candidates",
        "student": {
            "base": args.base_model,
            "chosen": best["name"],
            "dir": str(student_dir),
            "trials": trials,
            "reference_dev_ndcg10": reference_dev,
        },
        "candidates_and_assistant_seconds": round(assistant_seconds, 1),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        "machine": machine(),
    }


def table(report: Mapping[str, Any]) -> str:
    lines = []
    for name, res in report["results"].items():
        lines.append(f"\n{name}: {res['queries']} test queries, {res['corpus']} documents")
        lines.append(
            "| system | in-domain | nDCG@10 | Δ vs BM25 [95% CI] (Holm p) | Δ vs bge-small [95% CI] (Holm p) |"
        )
        lines[-1] += " ms/query |"
        lines.append("|---|---|---|---|---|---|")
        comp = {(c["system"], c["baseline"]): c for c in res["comparisons"]}
        for s, row in res["systems"].items():
            cells = []
            for b in ("bm25", "bge-small"):
                c = comp.get((s, b))
                cells.append(
                    "–"
                    if c is None
                    else f"{c['delta']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] ({c['p_holm']:.3g})"
                )
            domain = "yes" if row["in_domain"] else "no"
            lines.append(f"| {s} | {domain} | {row['ndcg10']:.3f} | {cells[0]} | {cells[1]} | {row['ms_per_query']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
