"""Distil and tune a static dense query side for bge-small indexes (a token table, Model2Vec-style).

    python -m twostage_search.benchmarks.studies.query_static --out engine/students/bge-small-query-static \
        --report benchmarks/results/query_static/fit.json --epochs 3 --listwise 1 --tau 0.05 \
        --dense-index scifact=var/scifact-dense --dense-index homedepot-search-relevance=var/hd-dense

(the bundled student, chosen on dev; the cosine-only candidates are in ``benchmarks/results/query_static/candidates/``)

(1) The token table: bge-small's query vector (CLS, normalised) of ``[CLS] prefix token [SEP]`` for every one
of its 30,522 word pieces, fed as ids (nothing is detokenised), 256 per batch. This is Model2Vec's
distillation (which needs the model in torch; here only the INT8 ONNX export exists, so the table is computed
with ONNX Runtime) without its PCA and Zipf weighting: the table stays in bge-small's own query space.
(2) The teacher's query vectors of query-like training texts that hold no dev or test query
(:func:`training_texts`, and ``--extra-texts`` more from :func:`extra_texts`), 32 per pass, length-bucketed.
(3) torch (``query_static_train.py``): the table (initialised from (1)), a bias and optionally per-token
weights and a residual MLP are trained on ``1 − cos(student(text), teacher(text))`` plus ``--listwise`` times
a KL divergence over documents of the ``--dense-index`` corpora (the teacher's top ``--top`` and ``--random``
random ones; texts are matched to a corpus by their source); the epoch with the best mean dense nDCG@10 over the
dev queries of the sets with an index (teacher vectors from the real one-query-per-pass encoder) is kept.
``--epochs 0`` writes the untuned table. Every encoding is cached under ``--cache``.
``benchmarks/studies/query_static_eval.py`` measures a student against the full query side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.studies.query_student import read_split, scifact_train_ids, split_ids
from twostage_search.engine.beir import find_file, read_corpus, read_queries
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

SETS = ("scifact", "crowdflower-search-relevance", "homedepot-search-relevance")
MEASURES = ("nDCG@10", "R@100")
DEPTH = 100
SCIFACT_DEV = 300
TEACHER = "bundled:bge-small-en-int8"


def training_texts(datasets: Path, seed: int = 0) -> list[tuple[str, str]]:
    """(source, text) pairs, no dev or test query among them: SciFact train queries after the first 300 (those
    are dev), the CrowdFlower and Home Depot ``train``-split queries, and pseudo-queries from the corpora:
    titles (all of SciFact's, 5,000 of CrowdFlower's, 6,000 of Home Depot's), 6,000 SciFact abstract sentences
    of 5–40 words, and one 1–4-word span of each of 3,000 CrowdFlower and 3,000 Home Depot titles. Seeded."""
    rnd = random.Random(seed)
    out: list[tuple[str, str]] = []
    scifact = {q.query_id: q.text for q in read_queries(find_file(datasets / "scifact", "queries"))}
    out += [
        ("scifact-train-query", scifact[q])
        for q in scifact_train_ids(datasets / "scifact")[SCIFACT_DEV:]
        if q in scifact
    ]
    for name in SETS[1:]:
        by_id = {q.query_id: q.text for q in read_queries(find_file(datasets / name, "queries"))}
        split = read_split(datasets / name)
        out += [(f"{name[:2]}-train-query", by_id[q]) for q, s in split.items() if s == "train" and q in by_id]
    docs = {name: list(read_corpus(find_file(datasets / name, "corpus"))) for name in SETS}
    for name, cap in zip(SETS, (5183, 5000, 6000), strict=True):
        titles = [d.title for d in docs[name] if d.title]
        rnd.shuffle(titles)
        out += [(f"{name[:2]}-title", t) for t in titles[:cap]]
    sentences = [s for d in docs["scifact"] for s in re.split(r"(?<=[.!?])\s+", d.text) if 5 <= len(s.split()) <= 40]
    rnd.shuffle(sentences)
    out += [("sc-sentence", s) for s in sentences[:6000]]
    for name in SETS[1:]:
        titles = [d.title for d in docs[name] if d.title]
        for title in rnd.sample(titles, 3000):
            words = title.split()
            if len(words) < 2:
                continue
            width = rnd.randint(1, min(4, len(words)))
            start = rnd.randint(0, len(words) - width)
            out.append((f"{name[:2]}-span", " ".join(words[start : start + width])))
    seen: set[str] = set()
    unique = []
    for source, text in out:
        if text and text not in seen:
            seen.add(text)
            unique.append((source, text))
    rnd.shuffle(unique)  # any prefix is a sample of every source (``--train-texts`` keeps a prefix)
    return unique


def extra_texts(datasets: Path, known: Sequence[str], count: int, seed: int = 1) -> list[tuple[str, str]]:
    """Up to ``count`` more corpus pseudo-queries, none in ``known``: half SciFact abstract sentences (5–40
    words), a quarter Home Depot titles, a quarter title spans of 2–6 words (Home Depot and CrowdFlower),
    interleaved and seeded; appended after :func:`training_texts` so its cached teacher vectors stay valid."""
    rnd = random.Random(seed)
    seen = set(known)
    docs = {name: list(read_corpus(find_file(datasets / name, "corpus"))) for name in SETS}
    sentences = [s for d in docs["scifact"] for s in re.split(r"(?<=[.!?])\s+", d.text) if 5 <= len(s.split()) <= 40]
    titles = [d.title for d in docs[SETS[2]] if d.title]
    spans: dict[str, str] = {}
    for name in SETS[1:]:
        for title in [d.title for d in docs[name] if d.title]:
            words = title.split()
            if len(words) >= 3:
                width = rnd.randint(2, min(6, len(words)))
                start = rnd.randint(0, len(words) - width)
                spans.setdefault(" ".join(words[start : start + width]), f"{name[:2]}-span")
    sources = {t: "sc-sentence" for t in sentences} | {t: "ho-title" for t in titles}
    pools = []
    for texts, share in ((sentences, 2), (titles, 1), (list(spans), 1)):
        fresh = sorted({t for t in texts if t and t not in seen})
        rnd.shuffle(fresh)
        pools += [(spans.get(t) or sources[t], t) for t in fresh[: count * share // 4]]
    rnd.shuffle(pools)
    out, taken = [], set()
    for source, text in pools:
        if text not in taken:
            taken.add(text)
            out.append((source, text))
    return out[:count]


def dev_queries(datasets: Path) -> dict[str, list[str]]:
    """The dev query texts of the three sets (choices are made on these only)."""
    out = {}
    for name in SETS:
        texts = {q.query_id: q.text for q in read_queries(find_file(datasets / name, "queries"))}
        ids, _ = split_ids(datasets / name, "dev")
        out[name] = [texts[q] for q in ids if q in texts]
    return out


def cached(path: Path, make: Any) -> np.ndarray:
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    array = np.asarray(make(), dtype=np.float32)
    np.save(path, array)
    return array


def text_key(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def teacher_batched(texts: Sequence[str], cache: Path, chunk: int = 1024) -> np.ndarray:
    """The teacher's query vectors, 32 texts per pass (length-bucketed; training targets only), cached per
    ``chunk`` texts so an interrupted run resumes."""
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, DenseEncoder

    encoder = DenseEncoder(TEACHER, batch_size=32, threads=2)
    parts = []
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        parts.append(
            cached(
                cache / f"teacher-{text_key(part)}.npy",
                lambda p=part: encoder.encode_docs([BGE_QUERY_PREFIX + t for t in p]),
            )
        )
        log.info("teacher vectors %d/%d", min(start + chunk, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def full_vectors(texts: Sequence[str], cache: Path) -> np.ndarray:
    """The teacher's query vectors as a retriever computes them (one query per pass), cached."""
    from twostage_search.engine.dense import DenseEncoder

    return cached(
        cache / f"full-{text_key(texts)}.npy", lambda: DenseEncoder(TEACHER, threads=2).encode_queries(list(texts))
    )


def token_table() -> np.ndarray:
    """Model2Vec-style initial table: the teacher's unit query vector of ``[CLS] prefix token [SEP]`` per id."""
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, dense_model_files
    from twostage_search.engine.onnx_session import cpu_session
    from twostage_search.engine.optional import require

    model, tokenizer_file = dense_model_files(TEACHER)
    tokenizer = require("tokenizers", "dense").Tokenizer.from_file(str(tokenizer_file))
    prefix = tokenizer.encode(BGE_QUERY_PREFIX, add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    vocab = tokenizer.get_vocab_size()
    session = cpu_session(model, threads=2, extra="dense")
    out = np.zeros((vocab, 384), dtype=np.float32)
    for start in range(0, vocab, 256):
        ids = np.asarray([[cls, *prefix, t, sep] for t in range(start, min(vocab, start + 256))], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feed)[0][:, 0]
        out[start : start + len(ids)] = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    return out


def tokenise(texts: Sequence[str]) -> list[list[int]]:
    from twostage_search.engine.dense import dense_model_files
    from twostage_search.engine.optional import require

    tokenizer = require("tokenizers", "dense").Tokenizer.from_file(str(dense_model_files(TEACHER)[1]))
    tokenizer.enable_truncation(max_length=256)
    return [list(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


CORPUS_OF = {"sc": "scifact", "cr": "crowdflower-search-relevance", "ho": "homedepot-search-relevance"}
GRADE_OFFSET = {"scifact": 0, "crowdflower-search-relevance": 1, "homedepot-search-relevance": 1}


def load_corpora(specs: Sequence[str]) -> dict[str, Any]:
    """``NAME=PATH`` dense-flat indexes built with the teacher → their document vectors (float32, in memory)."""
    from twostage_search import indexes
    from twostage_search.benchmarks.studies.query_static_train import Corpus

    out = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        index = indexes.load(Path(path))
        if index.meta["encoder"]["model"] != TEACHER:
            raise SystemExit(f"{path} was not built with {TEACHER}")
        out[name] = Corpus(list(index.doc_ids), np.array(index.vectors, dtype=np.float32))
    return out


def dev_sets(datasets: Path, corpora: dict[str, Any], cache: Path, limit: int) -> dict[str, Any]:
    """Each set's dev queries (the first ``limit``; 0: all) with the teacher's vectors and grade-shifted qrels."""
    from twostage_search.benchmarks.studies.query_static_train import DevSet

    out = {}
    for name in SETS:
        texts = {q.query_id: q.text for q in read_queries(find_file(datasets / name, "queries"))}
        ids, graded = split_ids(datasets / name, "dev")
        ids = [q for q in ids if q in texts][: limit or None]
        queries = [texts[q] for q in ids]
        qrels = {q: {d: g - GRADE_OFFSET[name] for d, g in graded.get(q, {}).items()} for q in ids}
        out[name] = DevSet(ids, tokenise(queries), full_vectors(queries, cache), qrels, corpora.get(name))
    return out


def fit(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.benchmarks.studies.query_static_train import Settings, dev_score, train
    from twostage_search.engine.dense import BGE_QUERY_PREFIX
    from twostage_search.engine.static_query import save_static

    args.cache.mkdir(parents=True, exist_ok=True)
    base = training_texts(args.datasets)[: args.train_texts or None]
    extra = extra_texts(args.datasets, [t for _, t in base], args.extra_texts) if args.extra_texts else []
    items = base + extra
    texts = [t for _, t in items]
    table = cached(args.cache / "token-table.npy", token_table)
    targets = teacher_batched([t for _, t in base], args.cache)
    if extra:
        targets = np.concatenate([targets, teacher_batched([t for _, t in extra], args.cache)])
    if args.embed_only:
        return {"training_texts": len(texts)}
    corpora = load_corpora(args.dense_index)
    dev = dev_sets(args.datasets, corpora, args.cache, args.dev_limit)
    settings = Settings(
        epochs=args.epochs,
        lr=args.lr,
        hidden=args.hidden,
        token_weights=args.token_weights,
        listwise=args.listwise,
        tau=args.tau,
        top=args.top,
        random=args.random,
    )
    corpus_of = [CORPUS_OF.get(source[:2]) if CORPUS_OF.get(source[:2]) in corpora else None for source, _ in items]
    weights, history = train(table, tokenise(texts), targets, corpus_of, corpora, dev, settings)
    best = max(history, key=dev_score)
    config = {
        "teacher": {"model": TEACHER, "pooling": "cls", "query_prefix": BGE_QUERY_PREFIX, "max_length": 256},
        "max_length": 256,
        "table": "bge-small's query vector of each word piece alone, then tuned (cosine to its query vectors"
        + (", plus a listwise KL over documents' scores)" if args.listwise else ")"),
        "training_texts": len(texts),
        "trained_on": "SciFact train queries (not dev), CrowdFlower/Home Depot train-split queries, "
        "titles, SciFact abstract sentences, title spans (no dev or test query)",
        "settings": settings.__dict__,
        "kept_epoch": best["epoch"],
        "dev": {key: value for key, value in best.items() if key != "epoch"},
    }
    if args.out:
        save_static(args.out, config, weights, dtype=args.dtype)
    return {"config": config, "history": history, "sources": dict(sorted(_count(items).items()))}


def _count(items: list[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for source, _ in items:
        counts[source] = counts.get(source, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--epochs", type=int, default=6, help="0: the untuned Model2Vec-style table")
    parser.add_argument("--train-texts", type=int, default=0, help="the first N (seeded order) training texts (0: all)")
    parser.add_argument("--embed-only", action="store_true", help="only compute (and cache) the teacher's vectors")
    parser.add_argument("--extra-texts", type=int, default=0, help="more corpus pseudo-queries (extra_texts)")
    parser.add_argument("--dev-limit", type=int, default=0, help="dev queries per set (0: all)")
    parser.add_argument(
        "--dense-index", action="append", default=[], help="NAME=PATH of a teacher dense-flat index (repeat)"
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--listwise", type=float, default=0.0, help="weight of the listwise KL (0: cosine only)")
    parser.add_argument("--tau", type=float, default=0.05, help="softmax temperature of the listwise term")
    parser.add_argument("--top", type=int, default=32, help="teacher's top documents per text (listwise)")
    parser.add_argument("--random", type=int, default=32, help="random documents per text and step (listwise)")
    parser.add_argument("--token-weights", action="store_true", help="learn one positive weight per word piece")
    parser.add_argument("--hidden", type=int, default=0, help="units of the residual MLP (0: none)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--cache", type=Path, default=Path("var/query_static"))
    parser.add_argument("--out", type=Path, default=None, help="write the student directory here")
    parser.add_argument("--report", type=Path, default=None, help="write the fit report (history) here")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = fit(args)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    json.dump({k: v for k, v in report.items() if k != "history"}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
