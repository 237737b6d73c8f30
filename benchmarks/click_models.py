"""Simulated users: cascade click models on graded relevance labels.

A cascade user (Craswell, Zoeter, Taylor & Ramsey, "An experimental comparison of click position-bias
models", WSDM 2008; the dependent-click form of Guo, Liu & Wang, WSDM 2009) reads the list top down.
At each position it clicks the document with a probability that depends only on its grade; after a
click it stops reading with a probability that also depends on the grade; without a click it reads on.

The three instantiations used throughout online learning to rank (Hofmann, Whiteson & de Rijke,
"Fidelity, soundness, and efficiency of interleaved comparison methods", TOIS 2013; Oosterhuis & de
Rijke, 2018) are defined on grades 0-4:

============== ============================ ============================
model          P(click | grade 0..4)        P(stop | click, grade 0..4)
============== ============================ ============================
perfect        .0  .2  .4  .8  1.0          0   0   0   0   0
navigational   .05 .3  .5  .7  .95          .2  .3  .5  .7  .9
informational  .4  .6  .7  .8  .9           .1  .2  .3  .4  .5
============== ============================ ============================

Judged sets on another scale are mapped onto 0-4 linearly: grade ``g`` of a scale ``lo..hi`` becomes
``round(4 (g - lo) / (hi - lo))`` (TREC DL's 0-3 and CrowdFlower's 1-4 both become 0, 1, 3, 4). A
document without a judgement gets grade 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CLICK_MODELS", "CascadeModel", "expected_ctr_rr", "grade_scale", "map_grades"]

MAX_GRADE = 4


@dataclass(frozen=True, slots=True)
class CascadeModel:
    """A cascade click model: click and stop probabilities per grade 0..4."""

    name: str
    click: tuple[float, ...]
    stop: tuple[float, ...]

    def __post_init__(self) -> None:
        for what, probs in (("click", self.click), ("stop", self.stop)):
            if len(probs) != MAX_GRADE + 1 or not all(0.0 <= p <= 1.0 for p in probs):
                raise ValueError(f"{self.name}: {what} needs {MAX_GRADE + 1} probabilities in [0, 1]")

    def clicks(self, grades: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean clicks, same shape as ``grades`` (rows: impressions; columns: positions, top first).

        Per position two uniforms are drawn (click, then stop), in row-major order, so a seeded
        generator gives the same clicks for the same grades.
        """
        g = np.asarray(grades, dtype=np.int64)
        if g.ndim != 2:
            raise ValueError("grades must be a 2-d array (impressions x positions)")
        if g.size and (g.min() < 0 or g.max() > MAX_GRADE):
            raise ValueError(f"grades must be in 0..{MAX_GRADE}")
        draws = rng.random((*g.shape, 2))
        clicked = draws[..., 0] < np.asarray(self.click)[g]
        stops = clicked & (draws[..., 1] < np.asarray(self.stop)[g])
        # a position is read when no earlier position stopped the user
        stopped_before: np.ndarray = np.cumsum(stops, axis=1) - stops
        read: np.ndarray = stopped_before == 0
        result: np.ndarray = clicked & read
        return result


CLICK_MODELS: Mapping[str, CascadeModel] = {
    m.name: m
    for m in (
        CascadeModel("perfect", (0.0, 0.2, 0.4, 0.8, 1.0), (0.0, 0.0, 0.0, 0.0, 0.0)),
        CascadeModel("navigational", (0.05, 0.3, 0.5, 0.7, 0.95), (0.2, 0.3, 0.5, 0.7, 0.9)),
        CascadeModel("informational", (0.4, 0.6, 0.7, 0.8, 0.9), (0.1, 0.2, 0.3, 0.4, 0.5)),
    )
}


def grade_scale(qrels: Mapping[str, Mapping[str, int]]) -> tuple[int, int]:
    """The lowest and highest grade of a qrels set (the scale that :func:`map_grades` maps onto 0-4)."""
    grades = [g for docs in qrels.values() for g in docs.values()]
    if not grades:
        raise ValueError("the qrels hold no judgements")
    lo, hi = min(grades), max(grades)
    if lo == hi:
        raise ValueError(f"the qrels hold only grade {lo}: no scale to map")
    return lo, hi


def map_grades(
    qrels: Mapping[str, Mapping[str, int]], scale: tuple[int, int] | None = None
) -> dict[str, dict[str, int]]:
    """The qrels with every grade mapped linearly onto 0-4 (``scale``: the source's lo, hi; default: observed).

    Grades outside the scale are clipped to it.
    """
    lo, hi = scale or grade_scale(qrels)
    if hi <= lo:
        raise ValueError(f"grade scale {lo}-{hi}: the highest grade must exceed the lowest")

    def mapped(g: int) -> int:
        return int(np.floor(MAX_GRADE * (min(max(g, lo), hi) - lo) / (hi - lo) + 0.5))

    return {q: {d: mapped(g) for d, g in docs.items()} for q, docs in qrels.items()}


def expected_ctr_rr(model: CascadeModel, grades: Any) -> tuple[float, float]:
    """Exact P(at least one click) and E[1 / rank of the first click] of one ranked list of grades.

    No click happens only if every position is read and none clicked (a user stops only after a click),
    so P(no click) is the product of (1 - click); the first click is at rank i with probability
    click_i times the product of (1 - click_j) above it.
    """
    probs = np.asarray(model.click)[np.asarray(grades, dtype=np.int64)]
    none_above = np.concatenate(([1.0], np.cumprod(1.0 - probs)[:-1]))
    first = none_above * probs
    return float(first.sum()), float((first / np.arange(1, len(probs) + 1)).sum())
