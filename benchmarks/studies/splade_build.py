"""SPLADE document encoding throughput, torch vs ONNX Runtime, on the same texts in one process.

    python -m twostage_search.benchmarks.studies.splade_build \\
        --dataset ../shared/datasets/scifact --docs 256 --onnx-batch 4,8,16 --rounds 2

The first ``--docs`` corpus documents (title + abstract, file order) at ``--max-length`` tokens are encoded
by each variant — torch (``SpladeMLM``, batches of ``--torch-batch``) and ONNX Runtime (``OnnxSplade``)
at each batch size in ``--onnx-batch`` — ``--rounds`` times, the variants in a rotating order each
round; docs/s is documents over the summed time. Both runtimes use ``--threads`` threads. This is the
encoding part of an index build (the Lucene part runs at several hundred docs/s, see ``meta.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from twostage_search.benchmarks.evaluation import machine
from twostage_search.engine.beir import find_file, read_corpus
from twostage_search.engine.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("../shared/datasets/scifact"))
    parser.add_argument("--model", default="bundled:splade-tiny")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--torch-batch", type=int, default=32)
    parser.add_argument("--onnx-batch", default="4,8,16")
    parser.add_argument("--also-max-length", type=int, action="append", default=[], help="ONNX at this length too")
    parser.add_argument("--int8-batch", type=int, default=0, help="also time INT8 ONNX at this batch size")
    parser.add_argument("--one-graph-batch", type=int, default=0, help="also time the one-graph ONNX export")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    setup_logging(0)
    import torch

    from twostage_search.engine.encoders import SpladeMLM
    from twostage_search.engine.onnx_splade import OnnxSplade

    torch.set_num_threads(args.threads)
    docs = [d.full_text for d in read_corpus(find_file(args.dataset, "corpus"))][: args.docs]
    variants: dict[str, SpladeMLM | OnnxSplade] = {
        f"torch bs{args.torch_batch}": SpladeMLM(args.model, max_length=args.max_length, batch_size=args.torch_batch)
    }
    for bs in (int(x) for x in args.onnx_batch.split(",")):
        variants[f"onnx bs{bs}"] = OnnxSplade(
            args.model, max_length=args.max_length, batch_size=bs, threads=args.threads
        )
    if args.one_graph_batch:  # the one-graph export (projects padding too), as before the split
        variants[f"onnx one-graph bs{args.one_graph_batch}"] = OnnxSplade(
            args.model, max_length=args.max_length, batch_size=args.one_graph_batch, threads=args.threads, split=False
        )
    for length in args.also_max_length:  # the document side at another length (e.g. 512), ONNX
        for bs in (int(x) for x in args.onnx_batch.split(",")):
            variants[f"onnx {length}t bs{bs}"] = OnnxSplade(
                args.model, max_length=length, batch_size=bs, threads=args.threads
            )
    if args.int8_batch:  # INT8 document encoding: faster, approximate (weights differ; see the impacts column)
        variants[f"onnx-int8 bs{args.int8_batch}"] = OnnxSplade(
            args.model, max_length=args.max_length, batch_size=args.int8_batch, threads=args.threads, precision="int8"
        )
    for encoder in variants.values():  # warm-up: allocator arenas, kernels
        encoder.encode(docs[:16])
    seconds = dict.fromkeys(variants, 0.0)
    terms: dict[str, float] = {}
    names = list(variants)
    for r in range(args.rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            started = time.perf_counter()
            vectors = variants[name].encode(docs)
            seconds[name] += time.perf_counter() - started
            terms[name] = sum(len(v.quantize(100.0)) for v in vectors) / len(vectors)
    info = machine()
    print(f"{len(docs)} docs × {args.rounds} rounds, max_length {args.max_length}, {args.threads} threads; {info}")
    base = seconds[names[0]]
    for name in names:
        rate = len(docs) * args.rounds / seconds[name]
        print(
            f"{name:<12} {rate:7.1f} docs/s  ×{base / seconds[name]:.2f} vs torch  mean impacts/doc {terms[name]:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
