"""The top ``k`` of a score array, ranked as every first stage ranks: score descending, ties by ``doc_id``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def top_k(scores: np.ndarray, doc_ids: Sequence[str], k: int, rows: np.ndarray | None = None) -> list[tuple[str, Any]]:
    """The ``k`` best (doc_id, score), the whole tied group at the cut-off decided by ``doc_id``.

    ``scores[i]`` belongs to ``doc_ids[rows[i]]`` (``doc_ids[i]`` without ``rows``). Scores come back as
    Python numbers of the array's kind (``int`` for integer impacts, ``float`` for similarities).
    """
    n = len(scores)
    if k <= 0 or n == 0:
        return []
    keep = np.arange(n) if k >= n else np.flatnonzero(scores >= np.partition(scores, n - k)[n - k])
    ids = keep if rows is None else np.asarray(rows)[keep]
    hits = sorted(zip((doc_ids[r] for r in ids.tolist()), scores[keep].tolist(), strict=True), key=_rank_key)
    return hits[:k]


def _rank_key(hit: tuple[str, Any]) -> tuple[Any, str]:
    return (-hit[1], hit[0])
