"""Dense document encoding speed, encoder settings side by side in one process (the dense side of a build).

    python -m twostage_search.benchmarks.studies.dense_build_speed --dataset ../shared/datasets/scifact \\
        --docs 256 --variants b1-l256,b16-l256,b16-l192 --threads 2

Each variant is a :class:`~twostage_search.engine.dense.DenseEncoder` setting written ``bB-lL`` (batch size
``B``, maximum length ``L`` tokens; ``-tT`` adds ``T`` intra-op threads). The first ``--docs`` documents of
the corpus (title + text, as an index encodes them) are cut into blocks of ``--block`` documents; every
block goes through every variant, the variants in a rotating order per block, so all variants see the same
machine load. A variant encodes a block as a build does: sorted by token length, batched, order restored
(a build sorts chunks of 256 documents, so ``--block 256`` pads as a build does). Reports documents per
second per variant (total documents over total encoding time), the speed-up over the first variant, the
mean tokens per document before truncation and after each variant's, and the machine's load, and writes
``--out/dense_build_speed-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twostage_search.benchmarks.evaluation import machine
from twostage_search.engine.beir import find_file, read_corpus
from twostage_search.engine.logs import setup_logging

log = logging.getLogger(__name__)

VARIANT = re.compile(r"^b(\d+)-l(\d+)(?:-t(\d+))?$")


@dataclass(frozen=True, slots=True)
class Variant:
    """One encoder setting: documents per forward pass, maximum tokens, intra-op threads."""

    batch_size: int
    max_length: int
    threads: int | None

    @property
    def name(self) -> str:
        return f"b{self.batch_size}-l{self.max_length}" + (f"-t{self.threads}" if self.threads else "")

    @classmethod
    def parse(cls, text: str, threads: int | None) -> Variant:
        match = VARIANT.match(text.strip())
        if match is None:
            raise ValueError(f"variant {text!r} is not bB-lL[-tT]")
        batch, length, own = match.groups()
        return cls(int(batch), int(length), int(own) if own else threads)


def token_lengths(texts: Sequence[str]) -> list[int]:
    """Tokens of each text, special tokens included, untruncated (the default dense model's tokenizer)."""
    from twostage_search.engine.dense import DEFAULT_DENSE, dense_model_files
    from twostage_search.engine.optional import require

    tokenizers = require("tokenizers", "dense")
    tokenizer = tokenizers.Tokenizer.from_file(str(dense_model_files(DEFAULT_DENSE)[1]))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(e.ids) for e in tokenizer.encode_batch(list(texts))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from twostage_search.engine.dense import DenseEncoder

    variants = [Variant.parse(v, args.threads) for v in args.variants.split(",")]
    texts: list[str] = []
    for doc in read_corpus(find_file(args.dataset, "corpus")):
        texts.append(doc.full_text)
        if len(texts) >= args.docs:
            break
    encoders = {
        v.name: DenseEncoder(batch_size=v.batch_size, max_length=v.max_length, threads=v.threads) for v in variants
    }
    for encoder in encoders.values():
        encoder.encode_docs(texts[: min(4, len(texts))])  # warm-up, untimed
    seconds = dict.fromkeys(encoders, 0.0)
    blocks = [texts[i : i + args.block] for i in range(0, len(texts), args.block)]
    load_before = machine()["load_average"]
    for number, block in enumerate(blocks):
        names = list(encoders)
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            encoders[name].encode_docs(block)
            seconds[name] += time.perf_counter() - started
        log.info("block %d/%d", number + 1, len(blocks))
    first = variants[0].name
    rates = {name: len(texts) / s for name, s in seconds.items()}
    lengths = token_lengths(texts)
    return {
        "dataset": str(args.dataset),
        "docs": len(texts),
        "mean_tokens_untruncated": round(sum(lengths) / max(len(texts), 1), 1),
        "block": args.block,
        "variants": {
            v.name: {
                "docs_per_s": round(rates[v.name], 2),
                "seconds": round(seconds[v.name], 2),
                "speedup": round(rates[v.name] / rates[first], 3),
                "mean_tokens": round(sum(min(n, v.max_length) for n in lengths) / max(len(texts), 1), 1),
            }
            for v in variants
        },
        "load_average_before": load_before,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--docs", type=int, default=256, help="the first N documents of the corpus")
    parser.add_argument("--block", type=int, default=64, help="documents per block (the rotation unit)")
    parser.add_argument("--variants", default="b1-l256,b16-l256", help="comma-separated bB-lL[-tT]")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of variants without -tT")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_build"))
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"dense_build_speed-{args.dataset.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
