"""How many impressions an online experiment needs: simulated A/B tests and team-draft interleaving.

Given two arms' rankings of the same judged queries (top ``k`` grades on the 0-4 scale of
:mod:`twostage_search.benchmarks.click_models`, -1 for an empty slot), each *run* simulates a stream
of ``max_n`` impressions, each of a query drawn uniformly from the set, shown to a cascade user:

- **A/B**: every impression is a new user, assigned to arm A or B by a fair coin, who sees that arm's
  list. At each number of impressions ``n`` of the grid (the first ``n`` of the stream): CTR (share of
  impressions with a click) compared by a pooled two-proportion z-test, and the reciprocal rank of the
  first click (0 without a click; its mean is MRR) by Welch's t-test
  (:func:`~twostage_search.engine.stats.two_proportion_z`, :func:`~twostage_search.engine.stats.welch_t`).
- **Interleaving**: every impression sees the team-draft merge of both lists
  (:func:`~twostage_search.engine.interleave.team_draft`, its coin flips drawn per impression); clicks
  are credited to the arm that placed the document, the arm with more credited clicks wins the query,
  and wins against losses go through the binomial sign test
  (:func:`~twostage_search.engine.stats.sign_test`; ties and queries without clicks do not count).

A run is significant *in the right direction* at ``n`` when p < ``alpha`` and the effect's sign is the
expected one (B better when B's offline nDCG is higher). The power at ``n`` is the share of runs that
are; the impressions needed are the smallest ``n`` of the grid with power at least ``power``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twostage_search.benchmarks.click_models import CascadeModel
from twostage_search.engine.interleave import team_draft
from twostage_search.engine.stats import sign_test, two_proportion_z, welch_t

__all__ = ["Grid", "MethodPower", "PairLists", "impressions_needed", "interleavings", "simulate_pair"]

EMPTY = -1  # grade of an empty slot: never clicked


@dataclass(frozen=True, slots=True)
class Grid:
    """Impression counts to test, how many runs, and the significance and power wanted."""

    sizes: tuple[int, ...] = tuple(50 * 2**i for i in range(11))  # 50 .. 51,200
    runs: int = 50
    alpha: float = 0.05
    power: float = 0.8
    seed: int = 0


@dataclass(frozen=True, slots=True)
class PairLists:
    """Both arms' top-k grades per query, and every team-draft merge of them with its probability.

    ``a`` and ``b``: (queries, k) grades. ``merged`` and ``teams``: (queries, patterns, k) grades and
    the placing team (0: A, 1: B; -1: empty) of each equally likely team-draft merge.
    """

    a: np.ndarray
    b: np.ndarray
    merged: np.ndarray
    teams: np.ndarray


@dataclass(frozen=True)
class MethodPower:
    """One method's result: power at each grid size, the impressions needed, the effect at the largest size."""

    method: str
    power: list[float]
    needed: int | None
    effect: float  # mean over runs at the largest size: ΔCTR, ΔMRR (B - A) or win rate of B - 0.5
    significant_right: float  # share of runs significant in the expected direction at the largest size
    significant_wrong: float  # ... and in the other direction
    extra: dict[str, Any] = field(default_factory=dict)


class _Coins:
    """A tie-breaker that replays a fixed sequence of coin flips (bit i: the i-th tie goes to team bit)."""

    def __init__(self, bits: Sequence[int]) -> None:
        self.bits = list(bits)
        self.used = 0

    def choice(self, seq: Sequence[int], /) -> int:
        bit = self.bits[self.used] if self.used < len(self.bits) else 0
        self.used += 1
        return seq[bit % len(seq)]


def interleavings(a: Sequence[str], b: Sequence[str], k: int) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Every team-draft merge of ``a`` and ``b`` (length ``k``), one per sequence of coin flips.

    Two-team drafting flips a coin at most once per round of two picks, so ``2**ceil(k/2)`` flip
    sequences, each equally likely, cover every outcome (a merge reached by several sequences is listed
    as often as it is reached, so the list is a uniform sample space).
    """
    flips = math.ceil(k / 2)
    result = []
    for bits in itertools.product((0, 1), repeat=flips):
        merged = team_draft([list(a), list(b)], k, _Coins(bits))
        result.append((merged.doc_ids, merged.teams))
    return result


def pair_lists(
    rankings_a: Sequence[Sequence[str]], rankings_b: Sequence[Sequence[str]], grades: Sequence[dict[str, int]], k: int
) -> PairLists:
    """Grade arrays of two arms' rankings (one per query, aligned) and of all their team-draft merges."""
    nq = len(grades)
    a = np.full((nq, k), EMPTY, dtype=np.int64)
    b = np.full((nq, k), EMPTY, dtype=np.int64)
    patterns = 2 ** math.ceil(k / 2)
    merged = np.full((nq, patterns, k), EMPTY, dtype=np.int64)
    teams = np.full((nq, patterns, k), EMPTY, dtype=np.int64)
    for q, (ra, rb, g) in enumerate(zip(rankings_a, rankings_b, grades, strict=True)):
        a[q, : min(k, len(ra))] = [g.get(d, 0) for d in ra[:k]]
        b[q, : min(k, len(rb))] = [g.get(d, 0) for d in rb[:k]]
        for p, (docs, team) in enumerate(interleavings(ra, rb, k)):
            merged[q, p, : len(docs)] = [g.get(d, 0) for d in docs]
            teams[q, p, : len(team)] = team
    return PairLists(a, b, merged, teams)


def _clicks(model: CascadeModel, grades: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clicks on lists that may hold empty slots (grade -1: never clicked, the user reads on)."""
    clicks: np.ndarray = model.clicks(np.maximum(grades, 0), rng) & (grades != EMPTY)
    return clicks


def reciprocal_ranks(clicks: np.ndarray) -> np.ndarray:
    """1 / rank of the first click per row (0 for a row without a click)."""
    first = np.argmax(clicks, axis=1)
    rr: np.ndarray = np.where(clicks.any(axis=1), 1.0 / (first + 1), 0.0)
    return rr


def credit(clicks: np.ndarray, teams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clicked documents credited to team A and to team B, per row."""
    return (clicks & (teams == 0)).sum(axis=1), (clicks & (teams == 1)).sum(axis=1)


def impressions_needed(power: Sequence[float], sizes: Sequence[int], wanted: float) -> int | None:
    """The smallest size whose power is at least ``wanted``; ``None`` if no size of the grid reaches it."""
    for n, p in zip(sizes, power, strict=True):
        if p >= wanted:
            return n
    return None


def _prefix(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Sums of the first n values, for each n of ``sizes``."""
    return np.cumsum(values, axis=-1)[..., sizes - 1]


def _ab(lists: PairLists, model: CascadeModel, grid: Grid, sign: int, rng: np.random.Generator) -> list[MethodPower]:
    sizes = np.asarray(grid.sizes)
    n = int(sizes.max())
    ctr_p, ctr_d, rr_p, rr_d = (np.empty((grid.runs, len(sizes))) for _ in range(4))
    for r in range(grid.runs):
        to_b = rng.random(n) < 0.5
        query = rng.integers(0, len(lists.a), n)
        clicks = _clicks(model, np.where(to_b[:, None], lists.b[query], lists.a[query]), rng)
        clicked, rr = clicks.any(axis=1).astype(float), reciprocal_ranks(clicks)
        nb = _prefix(to_b.astype(float), sizes)
        na = sizes - nb
        cb, ca = _prefix(clicked * to_b, sizes), _prefix(clicked * ~to_b, sizes)
        _, ctr_p[r] = two_proportion_z(ca, na, cb, nb)
        ctr_d[r] = np.divide(cb, nb, out=np.zeros(len(sizes)), where=nb > 0) - np.divide(
            ca, na, out=np.zeros(len(sizes)), where=na > 0
        )
        sb, sa = _prefix(rr * to_b, sizes), _prefix(rr * ~to_b, sizes)
        qb, qa = _prefix(rr**2 * to_b, sizes), _prefix(rr**2 * ~to_b, sizes)
        with np.errstate(divide="ignore", invalid="ignore"):
            mb, ma = sb / nb, sa / na
            vb, va = (qb - nb * mb**2) / (nb - 1), (qa - na * ma**2) / (na - 1)
        _, rr_p[r] = welch_t(ma, va, na, mb, vb, nb)
        rr_d[r] = np.nan_to_num(mb - ma)
    return [_summary("A/B CTR", ctr_p, ctr_d, sign, grid), _summary("A/B MRR", rr_p, rr_d, sign, grid)]


def _interleave(lists: PairLists, model: CascadeModel, grid: Grid, sign: int, rng: np.random.Generator) -> MethodPower:
    sizes = np.asarray(grid.sizes)
    n = int(sizes.max())
    p_values, effects = np.empty((grid.runs, len(sizes))), np.empty((grid.runs, len(sizes)))
    decided = np.empty((grid.runs, len(sizes)))
    for r in range(grid.runs):
        query = rng.integers(0, len(lists.a), n)
        pattern = rng.integers(0, lists.merged.shape[1], n)
        clicks = _clicks(model, lists.merged[query, pattern], rng)
        credit_a, credit_b = credit(clicks, lists.teams[query, pattern])
        wins, losses = _prefix(credit_b > credit_a, sizes), _prefix(credit_b < credit_a, sizes)
        decided[r] = wins + losses
        for i, (w, lo) in enumerate(zip(wins, losses, strict=True)):
            test = sign_test(int(w), int(lo))
            p_values[r, i] = 1.0 if test is None else test.p_value
            effects[r, i] = 0.0 if test is None else test.rate - 0.5
    result = _summary("interleaving", p_values, effects, sign, grid)
    result.extra["decided_share"] = round(float(decided[:, -1].mean() / sizes[-1]), 4)
    return result


def _summary(method: str, p_values: np.ndarray, effects: np.ndarray, sign: int, grid: Grid) -> MethodPower:
    significant = p_values < grid.alpha
    right = significant & (np.sign(effects) == sign) if sign else significant
    wrong = significant & ~right
    power = [round(float(v), 4) for v in right.mean(axis=0)]
    return MethodPower(
        method=method,
        power=power,
        needed=impressions_needed(power, grid.sizes, grid.power),
        effect=float(effects[:, -1].mean()),
        significant_right=float(right[:, -1].mean()),
        significant_wrong=float(wrong[:, -1].mean()),
    )


def simulate_pair(lists: PairLists, model: CascadeModel, grid: Grid, sign: int) -> list[MethodPower]:
    """A/B (CTR, MRR) and interleaving power of one arm pair under one click model.

    ``sign``: the expected direction of B against A (+1: B better, -1: A better, 0: none expected; then
    any significant run counts). Seeded by ``grid.seed`` and the model, so a rerun gives the same table.
    """
    if sign not in (-1, 0, 1):
        raise ValueError("sign must be -1, 0 or 1")
    model_key = sum(map(ord, model.name))
    ab = _ab(lists, model, grid, sign, np.random.default_rng([grid.seed, model_key, 0]))
    tdi = _interleave(lists, model, grid, sign, np.random.default_rng([grid.seed, model_key, 1]))
    return [*ab, tdi]
