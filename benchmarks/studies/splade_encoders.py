"""Our SPLADE encoder vs sentence-transformers' ``SparseEncoder`` on the same model, same texts, one process.

    nice -n 10 python -m twostage_search.benchmarks.studies.splade_encoders --dataset ../shared/datasets/scifact \\
        --docs 256 --queries 100

Document side: ``--docs`` corpus texts (title + abstract, the first by id), encoded in batches of
``--batch-size`` at ``--max-length`` tokens by each encoder in turn, ``--rounds`` times, alternating which
goes first; docs/s is texts over the summed time. Query side: ``--queries`` test queries encoded one at a
time (as a service does), alternating per query; p50 ms. Also the largest weight difference between the two
(they compute the same formula) and the mean number of terms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import machine
from twostage_search.engine.beir import find_file, read_corpus, read_queries
from twostage_search.engine.logs import setup_logging


def st_sparse(model: str, max_length: int) -> Any:
    from sentence_transformers import SparseEncoder

    from twostage_search.engine.models import resolve_model

    encoder = SparseEncoder(resolve_model(model), device="cpu")
    encoder.max_seq_length = max_length
    return encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--model", default="bundled:splade-tiny")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging(0)
    import torch

    from twostage_search.engine.encoders import SpladeMLM

    torch.set_num_threads(args.threads)
    docs = [d.full_text for d in read_corpus(find_file(args.dataset, "corpus"))][: args.docs]
    queries = [q.text for q in read_queries(find_file(args.dataset, "queries"))][: args.queries]
    ours = SpladeMLM(args.model, max_length=args.max_length, batch_size=args.batch_size)
    ours_q = ours.with_limits(max_length=64, top_n=None)
    st = st_sparse(args.model, args.max_length)

    def st_docs(texts: list[str]) -> Any:
        return st.encode_document(texts, batch_size=args.batch_size, convert_to_tensor=True)

    def st_query(text: str) -> Any:
        return st.encode_query([text], batch_size=1, convert_to_tensor=True)

    ours.encode(docs[:8])
    st_docs(docs[:8])
    doc_s = {"ours": 0.0, "sentence-transformers": 0.0}
    doc_calls: list[tuple[str, Callable[[list[str]], Any]]] = [
        ("ours", ours.encode),
        ("sentence-transformers", st_docs),
    ]
    for r in range(args.rounds):
        for name, encode_docs in doc_calls if r % 2 == 0 else doc_calls[::-1]:
            started = time.perf_counter()
            encode_docs(docs)
            doc_s[name] += time.perf_counter() - started
    q_ms: dict[str, list[float]] = {"ours": [], "sentence-transformers": []}
    query_calls: list[tuple[str, Callable[[str], Any]]] = [
        ("ours", lambda t: ours_q.encode([t])),
        ("sentence-transformers", st_query),
    ]
    for i, text in enumerate(queries):
        for name, encode in query_calls if i % 2 == 0 else query_calls[::-1]:
            started = time.perf_counter()
            encode(text)
            q_ms[name].append((time.perf_counter() - started) * 1000)
    # Same formula? Compare the weights of the first 16 documents.
    ours_vecs = ours.encode(docs[:16])
    st_vecs = st_docs(docs[:16]).to_dense()
    vocab = st.tokenizer.get_vocab()
    diff = max(abs(w - float(st_vecs[i, vocab[t]])) for i, v in enumerate(ours_vecs) for t, w in v.as_dict().items())
    report = {
        "model": args.model,
        "max_length": args.max_length,
        "docs": len(docs),
        "queries": len(queries),
        "threads": args.threads,
        "machine": machine(),
        "docs_per_s": {k: round(args.rounds * len(docs) / v, 1) for k, v in doc_s.items()},
        "query_p50_ms": {k: round(statistics.median(v), 2) for k, v in q_ms.items()},
        "doc_speed_ratio_ours_over_st": round(doc_s["sentence-transformers"] / doc_s["ours"], 2),
        "max_abs_weight_diff": round(diff, 6),
        "mean_doc_terms": round(statistics.fmean(len(v.terms) for v in ours_vecs), 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
