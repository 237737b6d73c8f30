"""The dense side of a build at other batch sizes and maximum lengths: their effect on dev retrieval quality.

    python -m twostage_search.benchmarks.studies.dense_build_length --dataset ../shared/datasets/scifact \\
        --variants b1-l256,b1-l128,b1-l192,b1-l512,b32-l256,b32-l128 \\
        --baseline-index var/scifact-dense --bm25-index var/scifact-bm25

Each variant is a :class:`~twostage_search.engine.dense.DenseEncoder` document setting written ``bB-lL`` (batch
size ``B``, maximum length ``L`` tokens; :mod:`dense_build_speed` times the same settings). The first variant
is the reference (the default build, batch 1 and 256 tokens). Every variant's vectors of the whole corpus
(title + text, encoded as :meth:`DenseFlatIndex.build` does: chunks of 256 documents, each sorted by token
length and batched) are cached under ``--cache`` as ``.npy``, so a rerun only scores. Shortcuts, both exact:

- when ``--baseline-index`` holds the corpus encoded with a variant's setting (its ``meta.json``), its
  ``vectors.bin`` is that variant's vectors;
- at batch 1 a document's vector depends on that document alone, so a document of at most ``min(L, L0)``
  tokens has the same vector at ``L`` as at the baseline's ``L0``: only the longer ones are encoded again
  (a few reused rows are re-encoded and their largest difference is reported).

Queries (encoded once by the default encoder; they are shorter than every ``L``, which the report checks):
dev is every query of ``qrels/train.tsv`` (SciFact's 809), or the ``dev`` split of ``--splits-file``. For each
variant: nDCG@10 and R@100 of the dense scan alone (exact top 100) and of the default hybrid (``--bm25-index``'s
top 100 fused with the dense top 100 as :class:`~twostage_search.indexes.hybrid.HybridIndex` does by default:
min-max, weights BM25 1 and dense 2), each against the reference with a bootstrap 95% CI and a paired
randomisation test (Holm across the table); the cosine of each document's vector with its reference vector;
and the compute a document costs at ``L`` (:func:`encoder_flops` over the corpus's token lengths, with the
padding a batch adds). Writes ``--out`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.evaluation import compare, evaluate, machine, mean, ranked
from twostage_search.benchmarks.graded_data import read_splits
from twostage_search.benchmarks.report import run_study
from twostage_search.benchmarks.studies.dense_build_speed import Variant, token_lengths
from twostage_search.engine.beir import find_file, read_corpus, read_qrels, read_queries
from twostage_search.engine.errors import InputError
from twostage_search.engine.logs import setup_logging
from twostage_search.engine.types import Query

log = logging.getLogger(__name__)

MEASURES = ("nDCG@10", "R@100")
DEPTH = 100
CHUNK = 256  # documents per encode_docs call in DenseFlatIndex.build
CHECK_ROWS = 4  # reused rows re-encoded to check the batch-1 shortcut
# bge-small-en-v1.5: BERT, 12 layers, hidden 384, feed-forward 1536
LAYERS, HIDDEN, FFN = 12, 384, 1536


def encoder_flops(tokens: int, *, layers: int = LAYERS, hidden: int = HIDDEN, ffn: int = FFN) -> int:
    """Floating-point operations (a multiply-add is 2) of one BERT encoder pass over ``tokens`` tokens.

    Per layer: the Q, K, V and output projections (4·h² multiply-adds per token), the feed-forward (2·h·ffn per
    token) and attention's two products QKᵀ and AV (2·n·h per token). Embeddings, softmax, layer norms and
    GELU are left out (under 2% at these sizes).
    """
    n = tokens
    return layers * 2 * (n * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * n * n * hidden)


def padded_shapes(lengths: Sequence[int], batch_size: int, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """(rows, width) of every forward pass a build makes: chunks of ``chunk`` documents, each sorted by
    length and cut into batches of ``batch_size``, every batch padded to its longest document."""
    shapes = []
    for start in range(0, len(lengths), chunk):
        ordered = sorted(lengths[start : start + chunk])
        for b in range(0, len(ordered), batch_size):
            batch = ordered[b : b + batch_size]
            shapes.append((len(batch), batch[-1]))
    return shapes


def build_flops(lengths: Sequence[int], max_length: int, batch_size: int) -> dict[str, float]:
    """Mean tokens and GFLOP per document at ``max_length`` (no padding, and with a build's padding)."""
    cut = [min(n, max_length) for n in lengths]
    exact = sum(encoder_flops(n) for n in cut)
    padded = sum(rows * encoder_flops(width) for rows, width in padded_shapes(cut, batch_size))
    docs = max(len(cut), 1)
    return {
        "mean_tokens": round(sum(cut) / docs, 1),
        "gflop_per_doc": round(exact / docs / 1e9, 3),
        "gflop_per_doc_padded": round(padded / docs / 1e9, 3),
    }


def reusable_rows(lengths: Sequence[int], max_length: int, baseline_length: int) -> np.ndarray:
    """Rows whose batch-1 vector at ``max_length`` is the baseline's (not truncated differently)."""
    return np.flatnonzero(np.asarray(lengths) <= min(max_length, baseline_length))


def save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def baseline_vectors(index: Path | None, doc_ids: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The baseline index's vectors in corpus order and its encoder settings, if it indexes this corpus."""
    if index is None:
        return None
    meta = json.loads((index / "meta.json").read_text(encoding="utf-8"))
    ids = json.loads((index / "doc_ids.json").read_text(encoding="utf-8"))
    if sorted(ids) != sorted(doc_ids):
        raise InputError(f"{index} does not index the documents of the corpus")
    rows = {d: i for i, d in enumerate(ids)}
    matrix = np.fromfile(index / "vectors.bin", dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    matrix = matrix.reshape(len(ids), int(meta["dim"])).astype(np.float32)
    return matrix[[rows[d] for d in doc_ids]], meta["encoder"]


def encode(variant: Variant, texts: Sequence[str]) -> np.ndarray:
    from twostage_search.engine.dense import DenseEncoder

    encoder = DenseEncoder(batch_size=variant.batch_size, max_length=variant.max_length, threads=variant.threads)
    parts = []
    for start in range(0, len(texts), CHUNK):
        parts.append(encoder.encode_docs(texts[start : start + CHUNK]))
        log.info("%s: %d/%d documents", variant.name, min(start + CHUNK, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, 384), dtype=np.float32)


def variant_vectors(
    variant: Variant,
    texts: Sequence[str],
    lengths: Sequence[int],
    cache: Path,
    baseline: tuple[np.ndarray, dict[str, Any]] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The corpus's vectors at ``variant`` (cached) and how they were obtained."""
    path = cache / f"{variant.name}.npy"
    how_path = path.with_suffix(".json")
    if path.is_file() and how_path.is_file():
        return np.load(path), json.loads(how_path.read_text(encoding="utf-8"))
    how: dict[str, Any] = {"encoded": len(texts)}
    setting = baseline[1] if baseline else {}
    same = setting.get("batch_size") == variant.batch_size and setting.get("max_length") == variant.max_length
    if baseline is not None and same:
        vectors, how = baseline[0], {"encoded": 0, "from": "baseline index"}
    elif baseline is not None and variant.batch_size == 1 and setting.get("batch_size") == 1:
        vectors = baseline[0].copy()
        reuse = reusable_rows(lengths, variant.max_length, int(setting["max_length"]))
        todo = np.setdiff1d(np.arange(len(texts)), reuse)
        if len(todo):
            vectors[todo] = encode(variant, [texts[i] for i in todo])
        check = reuse[:: max(len(reuse) // CHECK_ROWS, 1)][:CHECK_ROWS]
        again = encode(variant, [texts[i] for i in check]) if len(check) else np.zeros((0, vectors.shape[1]))
        diff = float(np.abs(again - baseline[0][check]).max()) if len(check) else 0.0
        how = {"encoded": len(todo), "reused": len(reuse), "reuse_check_max_abs_diff": diff}
    else:
        vectors = encode(variant, texts)
    save_npy(path, vectors)
    how_path.write_text(json.dumps(how) + "\n", encoding="utf-8")
    return vectors, how


def dense_run(query_vectors: np.ndarray, docs: np.ndarray, doc_ids: Sequence[str], qids: Sequence[str]) -> Any:
    """Exact top ``DEPTH`` of every query by inner product, ties by doc_id."""
    scores = query_vectors @ docs.T
    depth = min(DEPTH, docs.shape[0])
    run = {}
    for row, q in enumerate(qids):
        s = scores[row]
        cutoff = np.partition(s, -depth)[-depth]
        top = np.flatnonzero(s >= cutoff)
        run[q] = ranked((doc_ids[i], float(s[i])) for i in top.tolist())[:depth]
    return run


def bm25_run(index: Path, queries: Sequence[Query], cache: Path) -> dict[str, list[tuple[str, float]]]:
    path = cache / "bm25-dev.json"
    if path.is_file():
        cached: dict[str, list[tuple[str, float]]] = json.loads(path.read_text(encoding="utf-8"))
        if set(cached) == {q.query_id for q in queries}:
            return {q: [(d, s) for d, s in r] for q, r in cached.items()}
    from twostage_search import indexes

    retriever = indexes.load(index).retriever()
    run = {q.query_id: [(h.doc_id, h.score) for h in retriever.retrieve(q, DEPTH)] for q in queries}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run) + "\n", encoding="utf-8")
    return run


def dev_split(args: argparse.Namespace) -> tuple[list[Query], dict[str, dict[str, int]], str]:
    by_id = {q.query_id: q for q in read_queries(find_file(args.dataset, "queries"))}
    if args.splits_file is not None:
        ids = list(read_splits(args.splits_file).get("dev", ()))
        qrels = read_qrels(args.dataset / "qrels" / "test.tsv")
        how = f"dev split of {args.splits_file}"
    else:
        qrels = read_qrels(args.dataset / "qrels" / "train.tsv")
        ids, how = sorted(qrels), "every query of qrels/train.tsv"
    shifted = {q: {d: g - args.grade_offset for d, g in docs.items()} for q, docs in qrels.items()}
    queries = [by_id[q] for q in ids if q in by_id and q in shifted]
    if not queries:
        raise InputError(f"no dev queries with judgements in {args.dataset}")
    return queries, shifted, how


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, DenseEncoder
    from twostage_search.engine.fusion import fuse
    from twostage_search.indexes.hybrid import DEFAULT_METHOD, DEFAULT_WEIGHTS

    variants = [Variant.parse(v, args.threads) for v in args.variants.split(",")]
    docs = list(read_corpus(find_file(args.dataset, "corpus")))
    doc_ids, texts = [d.doc_id for d in docs], [d.full_text for d in docs]
    lengths = token_lengths(texts)
    queries, qrels, how = dev_split(args)
    qids = [q.query_id for q in queries]
    cache = args.cache / args.dataset.name
    query_path = cache / "queries-dev.npy"
    if query_path.is_file() and np.load(query_path).shape[0] == len(queries):
        query_vectors = np.load(query_path)
    else:
        query_vectors = DenseEncoder().encode_queries([q.text for q in queries])
        save_npy(query_path, query_vectors)
    query_tokens = max(token_lengths([BGE_QUERY_PREFIX + q.text for q in queries]))
    if query_tokens > min(v.max_length for v in variants):
        log.warning("a query has %d tokens: queries differ between variants", query_tokens)
    baseline = baseline_vectors(args.baseline_index, doc_ids)
    bm25 = bm25_run(args.bm25_index, queries, cache)
    weights = [DEFAULT_WEIGHTS["bm25"], DEFAULT_WEIGHTS["dense"]]
    rows: dict[str, Any] = {}
    per_query: dict[str, dict[str, dict[str, list[float]]]] = {}
    reference: np.ndarray | None = None
    for variant in variants:
        vectors, obtained = variant_vectors(variant, texts, lengths, cache, baseline)
        if reference is None:
            reference = vectors
        dense = dense_run(query_vectors, vectors, doc_ids, qids)
        hybrid = {q: fuse([bm25[q], dense[q]], weights, method=DEFAULT_METHOD)[:DEPTH] for q in qids}
        per_query[variant.name] = {
            "dense": evaluate(qrels, qids, dense, MEASURES, rel=args.rel),
            "hybrid": evaluate(qrels, qids, hybrid, MEASURES, rel=args.rel),
        }
        cosine = np.sum(vectors * reference, axis=1)
        rows[variant.name] = {
            "vectors": obtained,
            "truncated_docs": int(sum(n > variant.max_length for n in lengths)),
            "cosine_to_reference": {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)},
            **build_flops(lengths, variant.max_length, variant.batch_size),
            **{
                f"{system}_{m}": round(mean(values[m]), 4)
                for system, values in per_query[variant.name].items()
                for m in MEASURES
            },
        }
    first = variants[0].name
    pairs, keys = [], []
    for name in list(rows)[1:]:
        for system in ("dense", "hybrid"):
            for m in MEASURES:
                pairs.append((per_query[name][system][m], per_query[first][system][m]))
                keys.append((name, f"{system}_{m}"))
    for (name, key), comparison in zip(keys, compare(pairs), strict=True):
        rows[name].setdefault("vs_reference", {})[key] = comparison.as_dict()
    return {
        "dataset": str(args.dataset),
        "docs": len(docs),
        "doc_tokens": {
            "mean": round(float(np.mean(lengths)), 1),
            "p50": int(np.percentile(lengths, 50)),
            "p90": int(np.percentile(lengths, 90)),
            "max": int(max(lengths)),
            "over": {str(n): int(sum(x > n for x in lengths)) for n in (128, 192, 256, 512)},
        },
        "dev": {"queries": len(queries), "how": how, "max_query_tokens": query_tokens},
        "reference": first,
        "hybrid": {"method": DEFAULT_METHOD, "weights": {"bm25": weights[0], "dense": weights[1]}, "depth": DEPTH},
        "rel": args.rel,
        "grade_offset": args.grade_offset,
        "variants": rows,
        "machine": machine(),
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['dataset']}: {report['docs']} documents, {report['dev']['queries']} dev queries; "
        f"reference {report['reference']}",
        "",
        "| setting | dense nDCG@10 | dense R@100 | hybrid nDCG@10 | Δ hybrid nDCG@10 [95% CI] | hybrid R@100 "
        "| min cos | GFLOP/doc (padded) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["variants"].items():
        vs = row.get("vs_reference", {}).get("hybrid_nDCG@10")
        delta = f"{vs['delta']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}]" if vs else "—"
        lines.append(
            f"| {name} | {row['dense_nDCG@10']:.4f} | {row['dense_R@100']:.4f} | {row['hybrid_nDCG@10']:.4f} "
            f"| {delta} | {row['hybrid_R@100']:.4f} | {row['cosine_to_reference']['min']:.4f} "
            f"| {row['gflop_per_doc']:.2f} ({row['gflop_per_doc_padded']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--variants", default="b1-l256,b1-l128,b32-l256,b32-l128", help="bB-lL[-tT]; first = reference")
    parser.add_argument("--baseline-index", type=Path, help="a dense-flat index of the corpus to reuse vectors from")
    parser.add_argument("--bm25-index", type=Path, required=True, help="the lucene-bm25 index of the corpus")
    parser.add_argument("--splits-file", type=Path, help="a query-level split file; its dev split is used")
    parser.add_argument("--grade-offset", type=int, default=0, help="subtracted from every grade")
    parser.add_argument("--rel", type=int, default=1, help="lowest (shifted) grade R@100 counts as relevant")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of variants without -tT")
    parser.add_argument("--cache", type=Path, default=Path("var/dense_build"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.out is None:
        args.out = Path("benchmarks/results/dense_build") / f"dense_build_length-{args.dataset.name}.json"
    return run_study(args, run, table)


if __name__ == "__main__":
    sys.exit(main())
