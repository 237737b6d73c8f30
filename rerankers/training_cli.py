"""Command-line pieces of ``twostage train-cross-encoder``: its arguments and the training run.

Mining pairs from a first-stage index needs the index layer, so the command line passes that step in.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twostage_search.engine.argtypes import positive_float, positive_int
from twostage_search.engine.errors import InputError
from twostage_search.rerankers.training import Pair, TrainConfig, read_pairs, train_cross_encoder, write_pairs


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train-cross-encoder", help="fine-tune a cross-encoder on BEIR qrels + first-stage negatives")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset", type=Path, help="BEIR directory (corpus, queries, qrels/SPLIT.tsv) to mine pairs from"
    )
    src.add_argument("--pairs", type=Path, help="JSONL of (query, passage, label) pairs to train on instead")
    t.add_argument("--split", default="train")
    t.add_argument("--index", type=Path, help="first-stage index of the corpus (hard negatives; with --dataset)")
    t.add_argument("--save-pairs", type=Path, help="also write the mined pairs to this JSONL file")
    t.add_argument("--device", default="cpu", help="torch device for training (default cpu)")
    t.add_argument("--out", required=True, type=Path, help="output model directory (written atomically)")
    t.add_argument("--base-model", default="bundled:minilm-l6")
    t.add_argument("--negatives", type=positive_int, default=7, help="hard negatives per query (default 7)")
    t.add_argument("--random-negatives", type=int, default=4, help="random corpus negatives per query (default 4)")
    t.add_argument("--negative-depth", type=positive_int, default=30, help="sample negatives from this top (30)")
    t.add_argument(
        "--exclude-relevant-to",
        action="append",
        default=[],
        metavar="SPLIT",
        help="leave out of every pair each document relevant to a query of this qrels split (e.g. test)",
    )
    t.add_argument("--epochs", type=positive_int, default=8)
    t.add_argument("--batch-size", type=positive_int, default=16)
    t.add_argument("--learning-rate", type=positive_float, default=3e-5)
    t.add_argument("--max-length", type=positive_int, default=256)
    t.add_argument("--seed", type=int, default=13)
    t.add_argument(
        "--loss", choices=["bce", "pearson"], default="bce", help="bce (binary labels) or pearson (graded labels)"
    )


def train_from_args(args: argparse.Namespace, mine_pairs: Callable[[argparse.Namespace], Sequence[Pair]]) -> int:
    """Train from ``--pairs`` or from pairs ``mine_pairs`` mines (``--dataset``); print one summary line."""
    if args.pairs and args.exclude_relevant_to:
        raise InputError("--exclude-relevant-to filters mined pairs (--dataset), not a --pairs file")
    pairs = read_pairs(args.pairs) if args.pairs else mine_pairs(args)
    if args.save_pairs:
        write_pairs(pairs, args.save_pairs)
    config = TrainConfig(
        base_model=args.base_model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        seed=args.seed,
        device=args.device,
        loss=args.loss,
    )
    provenance = {
        "pairs": str(args.pairs) if args.pairs else f"{args.dataset} qrels/{args.split}.tsv",
        **(
            {}
            if args.pairs
            else {
                "negatives": args.negatives,
                "negative_depth": args.negative_depth,
                "random_negatives": args.random_negatives,
                "index": str(args.index),
                "excluded_documents_relevant_to": list(args.exclude_relevant_to),
            }
        ),
    }
    started = time.perf_counter()
    train_cross_encoder(pairs, args.out, config, provenance=provenance)
    print(f"trained on {len(pairs)} pairs in {time.perf_counter() - started:.0f}s → {args.out}")
    return 0
