"""What the fine-tuned graded cross-encoder reads, and how its studies report it (``graded_finetune``, ``graded_ce``).

A model reads the query and a passage as one of the ``graded`` model's logits does (:data:`PASSAGES`): ``ce``, the
title (64 tokens), or ``ce_text``, the title and the description (128 tokens).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.benchmarks.finetune import encode, frozen_states, load_states, save_states
from twostage_search.benchmarks.graded import GradedPair, GradedSet, candidates
from twostage_search.benchmarks.graded_data import LogitCache
from twostage_search.rerankers.graded import LOGITS, passage_text
from twostage_search.rerankers.onnx_cross_encoder import OnnxCrossEncoderReranker

log = logging.getLogger(__name__)

PASSAGES = tuple(LOGITS)  # what the model reads: "ce" (query + title, 64 tokens) or "ce_text" (+ description, 128)


def budget(kind: str) -> int:
    """The token budget of the ``kind`` logit (query + its passage)."""
    return LOGITS[kind][1]


def states_path(var: Path, name: str, split: str, kind: str, frozen: int) -> Path:
    """Where the frozen lower layers' outputs of a set's split are cached (shared with graded_ce)."""
    read = "" if kind == "ce" else f"-{kind}"
    return var / f"states-{name}-{split}{read}-len{budget(kind)}-frozen{frozen}.npz"


def cached_states(
    model: Any, tokenizer: Any, data: GradedSet, name: str, split: str, var: Path, frozen: int, kind: str = "ce"
) -> list[np.ndarray]:
    """The frozen lower layers' outputs of every pair of a set's split as the ``kind`` logit reads them, computed
    once and cached at :func:`states_path`."""
    path = states_path(var, name, split, kind, frozen)
    if not path.is_file():
        log.info("frozen states: %s %s", name, split)
        save_states(path, frozen_states(model, encode(tokenizer, texts(data, split, kind), budget(kind)), frozen))
    return load_states(path)


def logits_cache(var: Path, name: str, kind: str) -> Path:
    """Where the zero-shot INT8 cross-encoder's ``kind`` logits of a set are cached (:func:`fill_logits`)."""
    return var / f"{kind}-logits" / f"{kind}-logits-{name}.tsv"


def finetuned(kind: str) -> str:
    return f"fine-tuned MS MARCO cross-encoder (query + {LOGITS[kind][0]}), dev thresholds"


def zero_shot(kind: str) -> str:
    return f"zero-shot MS MARCO cross-encoder INT8 (query + {LOGITS[kind][0]}, {budget(kind)} tokens), dev thresholds"


def read_pairs(data: GradedSet, pairs: Sequence[GradedPair], kind: str = "ce") -> list[tuple[str, str]]:
    """(query, passage) of each pair, as the ``kind`` logit reads them."""
    return [
        (data.queries[p.query_id].text, passage_text(c, kind))
        for p, c in zip(pairs, candidates(data, pairs), strict=True)
    ]


def texts(data: GradedSet, split: str, kind: str = "ce") -> list[tuple[str, str]]:
    """(query, passage) of every pair of the split, as the ``kind`` logit reads them."""
    return read_pairs(data, data.pairs(split), kind)


def fill_logits(
    data: GradedSet, pairs: Sequence[Any], cache: LogitCache, onnx: OnnxCrossEncoderReranker, kind: str = "ce"
) -> None:
    """The INT8 cross-encoder's (query, passage) logits of pairs not yet in the cache, appended to it."""
    missing = [p for p in pairs if (p.query_id, p.doc_id) not in cache.values]
    if not missing:
        return
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    with cache.path.open("a", encoding="utf-8") as fh:
        for p, c in zip(missing, candidates(data, missing), strict=True):
            s = onnx.score(data.queries[p.query_id].text, [passage_text(c, kind)])[0]
            cache.values[(p.query_id, p.doc_id)] = s
            fh.write(f"{p.query_id}\t{p.doc_id}\t{s!r}\n")


def grader_tables(report: Mapping[str, Any]) -> list[str]:
    """The markdown lines of each test set's grader table and the fine-tuned − zero-shot κ difference."""
    lines: list[str] = []
    for name in ("crowdflower", "homedepot"):
        if name not in report:
            continue
        k = 3 if name == "homedepot" else 4
        lines += [
            f"\n{name} test ({report[name]['test_pairs']} pairs, {report[name]['test_queries']} queries)",
            f"| grader | Acc@{k} | Acc@2 | Macro-F1@{k} | κ linear | κ quadratic |",
            "|" + " --- |" * 6,
        ]
        for r in report[name]["rows"]:
            lines.append(
                f"| {r['grader']} | {r[f'acc@{k}']:.3f} | {r['acc@2']:.3f} | {r[f'macro_f1@{k}']:.3f} "
                f"| {r['kappa_linear']:.3f} | {r['kappa_quadratic']:.3f} |"
            )
        diffs = {"zero-shot": report[name]["kappa_quadratic_diff_vs_zero_shot"]}
        if compare := report[name].get("kappa_quadratic_diff_vs_compare"):  # graded_ce --compare (served)
            diffs[f"{compare['compare']} served"] = compare
        for other, ci in (diffs | report[name].get("kappa_quadratic_diff_vs", {})).items():
            diff = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
            lines.append(f"Δ κ quadratic (fine-tuned − {other}): {diff}")
    return lines
