"""Cooperative deadlines: a point in time by which a stage must stop, and what it managed before it.

A :class:`Deadline` is an absolute instant on the monotonic clock, fixed once (the service fixes it when
a request *arrives*, so time spent queueing counts). Rerankers that honour it
(:class:`~twostage_search.engine.protocols.HonoursDeadline`) check it between units of work — batches,
windows, pairs — and never start a unit after it has passed; what they return is a
:class:`PartialRanking`: the candidates they ordered, their costs, the candidates left unscored and
whether the answer was cut short. ``Deadline`` also carries an optional cancel flag so a caller that has
given up (a timed-out request) stops the work at the next check even before the instant.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from twostage_search.engine.cost import StageCost
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, RankedList


@dataclass(frozen=True, slots=True)
class Deadline:
    """Stop work at ``at`` (``time.monotonic()`` seconds) or as soon as :meth:`cancel` is called.

    Copies made by :meth:`share` keep the same cancel flag, so cancelling a request cancels every stage.
    """

    at: float
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @classmethod
    def after(cls, seconds: float, *, start: float | None = None) -> Deadline:
        """The deadline ``seconds`` after ``start`` (a ``time.monotonic()`` value; default: now)."""
        if not seconds >= 0:
            raise InputError(f"deadline seconds must be non-negative, got {seconds}")
        return cls((time.monotonic() if start is None else start) + seconds)

    def remaining_s(self) -> float:
        """Seconds left (0 once passed or cancelled)."""
        if self._cancelled.is_set():
            return 0.0
        return max(self.at - time.monotonic(), 0.0)

    def expired(self) -> bool:
        """True once the instant has passed or the work was cancelled: stop before the next unit."""
        return self._cancelled.is_set() or time.monotonic() >= self.at

    def cancel(self) -> None:
        """Ask every stage holding this deadline (or a share of it) to stop at its next check."""
        self._cancelled.set()

    def share(self, fraction: float) -> Deadline:
        """A deadline ``fraction`` of the remaining time from now (a cascade's first stage), same cancel flag."""
        if not 0 < fraction <= 1:
            raise InputError(f"deadline share must be in (0, 1], got {fraction}")
        return Deadline(time.monotonic() + self.remaining_s() * fraction, self._cancelled)

    def earliest(self, other: Deadline | None) -> Deadline:
        """The earlier of two deadlines (this one's cancel flag)."""
        if other is None or other.at >= self.at:
            return self
        return Deadline(other.at, self._cancelled)


@dataclass(frozen=True, slots=True)
class PartialRanking:
    """What a reranker produced before its deadline.

    Attributes:
        ranking: the candidates it ordered, sorted; their scores are comparable with each other.
        costs: one record per stage that ran (``rerank``, ``rerank2``, …).
        unscored: candidates it did not reach, in input (first-stage) order; served below ``ranking``.
        degraded: the deadline cut the work short (always true when ``unscored`` is non-empty; a listwise
            reranker that stops between windows returns every candidate but sets it).
    """

    ranking: RankedList
    costs: tuple[StageCost, ...] = ()
    unscored: tuple[Candidate, ...] = ()
    degraded: bool = False

    def __post_init__(self) -> None:
        if self.unscored and not self.degraded:
            object.__setattr__(self, "degraded", True)
