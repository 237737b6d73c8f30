"""Fit and measure a cheap dense query side: bge-small's first layers + a linear head onto its query space.

    python -m twostage_search.benchmarks.studies.query_student fit --layers 2 --pooling mean --alpha 10 \\
        --out engine/students/bge-small-query-l2
    python -m twostage_search.benchmarks.studies.query_student evaluate --dataset ../shared/datasets/scifact \\
        --dense-index var/scifact/dense --bm25-index var/scifact/bm25 --student bundled:bge-small-query-l2

``fit`` encodes query-like training texts with the full model (bge-small INT8, the query prefix, one per
pass: the targets) and reads the hidden states after ``--layers`` layers from the same pass (the inputs),
then fits the head by ridge regression (closed form, ``--alpha``) and writes a student directory
(:mod:`twostage_search.engine.dense_query`). Training texts hold no dev or test query: SciFact train queries
after the first 300 (the first 300 are dev), the CrowdFlower and Home Depot queries of the ``train`` split
(benchmarks/data/splits; at most ``--hd-queries`` of Home Depot's, seeded), and document titles of the three
corpora (``--titles`` of each, seeded). Encodings are cached in ``--cache``. It reports the mean cosine of
student and full-model vectors on the SciFact dev queries and the CrowdFlower dev queries.

``evaluate`` runs the dev and test queries through the full query side and the student over the same
dense index (exact scan) and, with ``--bm25-index``, the default hybrid (BM25 + dense, min-max 1:2): nDCG@10
and R@100 of each, the student's difference with a bootstrap 95% CI and a paired randomisation test (Holm),
and each query side's p50 encoding time (same run, alternating). Dev/test as in ``benchmarks.hybrid``'s
``split`` file convention: SciFact dev = the first 300 query ids of ``qrels/train.tsv``, test =
``qrels/test.tsv``; other datasets use ``benchmarks/data/splits/<dataset>.tsv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean
from twostage_search.benchmarks.graded_data import SPLITS_DIR
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")
DEPTH = 100
SCIFACT_DEV = 300


def read_split(dataset: Path) -> dict[str, str]:
    """query id → ``train``/``dev``/``test`` from benchmarks/data/splits (empty when the dataset has no file)."""
    path = SPLITS_DIR / f"{dataset.name}.tsv"
    if not path.is_file():
        return {}
    rows = [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    return {query_id: split for query_id, split in rows}


def scifact_train_ids(dataset: Path) -> list[str]:
    """SciFact's train.tsv query ids in file order (the first 300 are dev)."""
    seen: dict[str, None] = {}
    for query_id in read_qrels(dataset / "qrels" / "train.tsv"):
        seen.setdefault(query_id, None)
    return list(seen)


def training_texts(datasets: Path, *, hd_queries: int, titles: tuple[int, int, int], seed: int = 0) -> list[str]:
    """Query-like texts that hold no dev or test query (see the module docstring); ``titles`` per corpus
    (SciFact, CrowdFlower, Home Depot)."""
    rnd = random.Random(seed)
    scifact = datasets / "scifact"
    queries = {q.query_id: q.text for q in read_queries(find_file(scifact, "queries"))}
    texts = [queries[q] for q in scifact_train_ids(scifact)[SCIFACT_DEV:] if q in queries]
    for name, cap in (("crowdflower-search-relevance", None), ("homedepot-search-relevance", hd_queries)):
        by_id = {q.query_id: q.text for q in read_queries(find_file(datasets / name, "queries"))}
        train = [by_id[q] for q, split in read_split(datasets / name).items() if split == "train" and q in by_id]
        if cap is not None:
            rnd.shuffle(train)
            train = train[:cap]
        texts += train
    names = ("scifact", "crowdflower-search-relevance", "homedepot-search-relevance")
    for name, count in zip(names, titles, strict=True):
        found = [d.title for d in read_corpus(find_file(datasets / name, "corpus")) if d.title]
        rnd.shuffle(found)
        texts += found[:count]
    return texts


def encode_with_layers(texts: list[str], layers: int, cache: Path) -> dict[str, np.ndarray]:
    """Full-model query vectors (``teacher``) and pooled hidden states after ``layers`` layers (``cls``,
    ``mean``) of ``texts``, one pass each, cached in ``cache`` (an ``.npz``)."""
    if cache.is_file():
        stored = dict(np.load(cache, allow_pickle=False))
        if stored["texts"].tolist() == texts:
            return stored
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, DEFAULT_DENSE, dense_model_files
    from twostage_search.engine.dense_query import layer_output
    from twostage_search.engine.onnx_session import cpu_session
    from twostage_search.engine.optional import require

    onnx = require("onnx", "dense")
    tokenizers = require("tokenizers", "dense")
    model_file, tokenizer_file = dense_model_files(DEFAULT_DENSE)
    graph = onnx.load(str(model_file))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(layer_output(layers), onnx.TensorProto.FLOAT, None))
    session = cpu_session(graph.SerializeToString(), threads=None, extra="dense")
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=256)
    out = {k: np.zeros((len(texts), 384), dtype=np.float32) for k in ("teacher", "cls", "mean")}
    for i, text in enumerate(texts):
        ids = np.asarray([tokenizer.encode(BGE_QUERY_PREFIX + text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        final, hidden = session.run(None, feed)
        out["teacher"][i] = final[0, 0] / np.linalg.norm(final[0, 0])
        out["cls"][i], out["mean"][i] = hidden[0, 0], hidden[0].mean(axis=0)
        if i % 1000 == 0:
            log.info("encoded %d/%d", i, len(texts))
    result: dict[str, np.ndarray] = {"texts": np.asarray(texts), **out}
    np.savez(cache, texts=result["texts"], teacher=out["teacher"], cls=out["cls"], mean=out["mean"])
    return result


def features(encoded: dict[str, np.ndarray], pooling: str) -> np.ndarray:
    parts = {"cls": ["cls"], "mean": ["mean"], "cls+mean": ["cls", "mean"]}[pooling]
    return np.concatenate([encoded[p] for p in parts], axis=1)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``weight``, ``bias`` minimising ``|x W + b - y|² + alpha |W|²`` (closed form, centred)."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = (x - mx).astype(np.float64)
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return weight.astype(np.float32), (my - mx @ weight).astype(np.float32)


def mean_cosine(weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    mapped = x @ weight + bias
    mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
    return float((mapped * y).sum(axis=1).mean())


def dev_texts(datasets: Path) -> dict[str, list[str]]:
    scifact = datasets / "scifact"
    queries = {q.query_id: q.text for q in read_queries(find_file(scifact, "queries"))}
    out = {"scifact-dev": [queries[q] for q in scifact_train_ids(scifact)[:SCIFACT_DEV] if q in queries]}
    name = "crowdflower-search-relevance"
    split = read_split(datasets / name)
    out[f"{name}-dev"] = [
        q.text for q in read_queries(find_file(datasets / name, "queries")) if split.get(q.query_id) == "dev"
    ]
    return out


def fit(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.atomic import atomic_directory
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, DEFAULT_DENSE
    from twostage_search.engine.dense_query import HEAD_FILE, KIND, STUDENT_FILE

    args.cache.mkdir(parents=True, exist_ok=True)
    counts = tuple(int(n) for n in args.titles.split(","))
    if len(counts) != 3:
        raise SystemExit("--titles takes three counts: SciFact,CrowdFlower,Home Depot")
    texts = training_texts(args.datasets, hd_queries=args.hd_queries, titles=(counts[0], counts[1], counts[2]))
    train = encode_with_layers(texts, args.layers, args.cache / f"train-L{args.layers}.npz")
    weight, bias = ridge(features(train, args.pooling), train["teacher"], args.alpha)
    report: dict[str, Any] = {
        "training_texts": len(texts),
        "layers": args.layers,
        "pooling": args.pooling,
        "alpha": args.alpha,
    }
    for name, dev in dev_texts(args.datasets).items():
        encoded = encode_with_layers(dev, args.layers, args.cache / f"{name}-L{args.layers}.npz")
        report[f"cosine_{name}"] = round(
            mean_cosine(weight, bias, features(encoded, args.pooling), encoded["teacher"]), 4
        )
    student = {
        "kind": KIND,
        "teacher": {"model": DEFAULT_DENSE, "pooling": "cls", "query_prefix": BGE_QUERY_PREFIX, "max_length": 256},
        "layers": args.layers,
        "pooling": args.pooling,
        "head": {"fit": "ridge regression onto the teacher's unit query vectors", "alpha": args.alpha},
        "training_texts": len(texts),
        "trained_on": "SciFact train queries (not dev), CrowdFlower/Home Depot train-split queries, document titles",
        "dev": {k: v for k, v in report.items() if k.startswith("cosine_")},
    }
    with atomic_directory(args.out, marker=STUDENT_FILE) as tmp:
        np.savez(tmp / HEAD_FILE, weight=weight, bias=bias)
        (tmp / STUDENT_FILE).write_text(json.dumps(student, indent=2) + "\n", encoding="utf-8")
    return report


def split_ids(dataset: Path, split: str) -> tuple[list[str], dict[str, dict[str, int]]]:
    if dataset.name == "scifact":
        if split == "dev":
            qrels = read_qrels(dataset / "qrels" / "train.tsv")
            ids = scifact_train_ids(dataset)[:SCIFACT_DEV]
            return ids, {q: qrels[q] for q in ids}
        qrels = read_qrels(dataset / "qrels" / "test.tsv")
        return list(qrels), qrels
    qrels = read_qrels(dataset / "qrels" / "test.tsv")
    names = read_split(dataset)
    if not names:  # no split file: every judged query is test
        return (list(qrels) if split == "test" else []), qrels
    return [q for q in qrels if names.get(q) == split], qrels


def evaluate_student(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search import indexes
    from twostage_search.engine.fusion import MINMAX, fuse
    from twostage_search.engine.types import Query

    dense = indexes.load(args.dense_index)
    sides = {"full": dense.retriever(query_encoder="full"), "student": dense.retriever(query_encoder=args.student)}
    bm25 = indexes.load(args.bm25_index).retriever() if args.bm25_index else None
    texts = {q.query_id: q.text for q in read_queries(find_file(args.dataset, "queries"))}
    rel = args.rel
    report: dict[str, Any] = {"dataset": args.dataset.name, "student": args.student, "machine": machine()}
    for split in ("dev", "test"):
        ids, graded = split_ids(args.dataset, split)
        qrels = {q: {d: g - args.grade_offset for d, g in docs.items()} for q, docs in graded.items()}
        ids = [q for q in ids if q in texts][: args.limit or None]
        if not ids:
            continue
        runs: dict[str, dict[str, list[tuple[str, float]]]] = {}
        ms: dict[str, list[float]] = {side: [] for side in sides}
        for i, query_id in enumerate(ids):
            query = Query(query_id, texts[query_id])
            lexical = [(h.doc_id, h.score) for h in bm25.retrieve(query, DEPTH)] if bm25 else None
            for side in list(sides)[i % 2 :] + list(sides)[: i % 2]:
                started = time.perf_counter()
                vector = sides[side].encoder.encode_queries([query.text])[0]
                ms[side].append((time.perf_counter() - started) * 1000)
                hits = sides[side].search_vector(vector, DEPTH)
                runs.setdefault(f"dense/{side}", {})[query_id] = hits
                if lexical is not None:
                    fused = fuse([lexical, hits], [1.0, 2.0], method=MINMAX)[:DEPTH]
                    runs.setdefault(f"hybrid/{side}", {})[query_id] = fused
        scores = {name: evaluate(qrels, ids, run, MEASURES, rel=rel) for name, run in runs.items()}
        rows: dict[str, Any] = {name: {m: round(mean(v), 4) for m, v in s.items()} for name, s in scores.items()}
        pairs = [
            (scores[f"{kind}/student"][m], scores[f"{kind}/full"][m])
            for kind in ("dense", "hybrid")
            if f"{kind}/full" in scores
            for m in MEASURES
        ]
        labels = [f"{kind} {m}" for kind in ("dense", "hybrid") if f"{kind}/full" in scores for m in MEASURES]
        rows["student_minus_full"] = {
            label: {"diff": round(c.delta, 4), "ci95": [round(c.ci_low, 4), round(c.ci_high, 4)], "p_holm": c.p_holm}
            for label, c in zip(labels, compare(pairs), strict=True)
        }
        rows["encode_ms_p50"] = {side: round(statistics.median(v), 2) for side, v in ms.items()}
        rows["queries"] = len(ids)
        report[split] = rows
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a student's head and write its directory")
    f.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    f.add_argument("--layers", type=int, default=4)
    f.add_argument("--pooling", choices=("cls", "mean", "cls+mean"), default="mean")
    f.add_argument("--alpha", type=float, default=10.0)
    f.add_argument("--hd-queries", type=int, default=3000)
    f.add_argument("--titles", default="1500,1000,1000", help="document titles of SciFact,CrowdFlower,Home Depot")
    f.add_argument("--cache", type=Path, default=Path("var/query_student"))
    f.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate", help="full query side vs a student over one dense index (and the hybrid)")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--dense-index", type=Path, required=True)
    e.add_argument("--bm25-index", type=Path, default=None)
    e.add_argument("--student", default="bundled:bge-small-query-l2")
    e.add_argument("--rel", type=int, default=1, help="lowest relevant grade for R@100 (after the offset)")
    e.add_argument(
        "--grade-offset", type=int, default=0, help="subtracted from every grade (1: CrowdFlower, Home Depot)"
    )
    e.add_argument("--limit", type=int, default=0, help="at most N queries per split (0: all)")
    e.add_argument("--out", type=Path, default=Path("benchmarks/results/query_student"))
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "fit":
        report = fit(args)
    else:
        report = evaluate_student(args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"query_student-{args.dataset.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
