"""Admission control by predicted cost: each arm admits a request when it would finish by its deadline.

Each arm has its own worker threads (``workers``) and a FIFO queue. A request comes with an
:class:`Estimate`: its predicted service time (from the arm's cost model, :mod:`engine.costmodel`, or a
prior when the arm has none) and its deadline. The arm's :class:`Ledger` corrects the prediction by what
it has observed on *this* arm (:class:`Correction`, an EWMA of observed / predicted service time), then
simulates its workers: each running request finishes when its corrected prediction says, each queued
one starts on the first free worker. The request is admitted when

    predicted wait (until a worker is free for it) + its own predicted service time <= its deadline;

otherwise it is refused at once (429) with ``Retry-After`` = the seconds until enough predicted work
has drained for it to fit. A request's own time is capped at its deadline (the stages stop there), so a
request that would start at once is always admitted. A cheap arm is never capped by an expensive arm's
numbers: every prediction, correction and queue is per arm.

Hard bounds hold whatever the predictions say: at most ``workers + queue`` requests per arm admitted at
once, and at most ``max_chars`` characters of request text (query and documents) held by them. A slot
is released when the work finishes — not when a timed-out client gives up — so the bound holds for the
threads too. Work that waited in the queue past its deadline is dropped before it starts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from twostage_search.engine.costmodel import CostModel
from twostage_search.engine.deadline import Deadline
from twostage_search.service.experiment import ArmConfig

T = TypeVar("T")

ALPHA = 0.2
"""Weight of the newest observation in the EWMA correction (once past the first 1/ALPHA observations)."""


MIN_MS = 1.0
"""Smallest predicted service time: a model predicting 0 ms could never be corrected by a ratio."""


class Overloaded(Exception):
    """The arm cannot finish the request by its deadline, or its hard bounds are reached."""

    def __init__(self, arm: str, retry_after_s: int, reason: str) -> None:
        super().__init__(f"{arm}: {reason}")
        self.arm, self.retry_after_s, self.reason = arm, retry_after_s, reason


class Expired(Exception):
    """The request's deadline passed while it waited in the queue; it was not started."""


@dataclass(frozen=True, slots=True)
class Estimate:
    """What admission needs to know about one request.

    Attributes:
        predicted_ms: its service time from the arm's cost model; ``None`` when the arm has none (the
            ledger's prior is used, replaced by the first observation).
        deadline_s: seconds from now by which it must be answered (its budget, else the request timeout).
        chars: characters of request text it holds (query and documents), for the memory bound.
        key: what the prediction is of (:func:`cost_key` of the arm); a new key resets the arm's correction
            (``None``: keep it).
    """

    predicted_ms: float | None
    deadline_s: float
    chars: int = 0
    key: object = None


def cost_key(arm: ArmConfig) -> tuple[object, ...]:
    """What an arm's service time depends on (not its weight): a change resets its correction."""
    return (
        arm.reranker.key(), arm.depth, arm.rerank_depth, arm.policy, arm.cost_model, arm.chunked_policy, arm.ks,
        arm.budget_ms,
    )  # fmt: skip


def predicted_ms(cost: CostModel | None, *, retrieve: int, rerank: int) -> float | None:
    """Service time of retrieving ``retrieve`` and reranking ``rerank`` documents by ``cost`` (None: no model)."""
    if cost is None:
        return None
    return cost.predict_ms("retrieve", retrieve) + cost.predict_ms("rerank", rerank)


class Correction:
    """Observed / predicted service time of one arm, as an exponentially weighted moving average.

    The n-th observation has weight ``max(ALPHA, 1 / (n + prior_weight))``: a running mean at first, an
    EWMA (recent behaviour) afterwards. ``prior_weight`` 1 trusts a fitted cost model like one
    observation; 0 (a prior guess) lets the first observation replace it.
    """

    def __init__(self, prior_weight: int = 1, alpha: float = ALPHA) -> None:
        self.factor, self.seen, self.prior_weight, self.alpha = 1.0, 0, prior_weight, alpha

    def observe(self, predicted_ms: float, observed_ms: float) -> None:
        if not (predicted_ms > 0 and math.isfinite(observed_ms) and observed_ms >= 0):
            return
        self.seen += 1
        weight = max(self.alpha, 1.0 / (self.seen + self.prior_weight))
        self.factor += weight * (observed_ms / predicted_ms - self.factor)


@dataclass(slots=True)
class Ticket:
    """One admitted request: its base and corrected predictions, size and start time (None: queued)."""

    number: int
    base_ms: float
    ms: float
    chars: int
    correction: Correction
    started: float | None = field(default=None)


class Ledger:
    """The admission decisions and the bookkeeping of one arm, without threads (``clock`` in seconds).

    Thread-safe: every method holds the ledger's lock.
    """

    def __init__(
        self,
        name: str,
        workers: int,
        queue: int,
        *,
        max_chars: int = 10_000_000,
        prior_ms: float = 1000.0,
        alpha: float = ALPHA,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.workers, self.limit, self.max_chars = name, workers, workers + queue, max_chars
        self.prior_ms, self.alpha, self.clock = prior_ms, alpha, clock
        self._tickets: dict[int, Ticket] = {}  # admitted, in admission (FIFO) order
        self._numbers = itertools.count()
        self._correction: Correction | None = None  # made by the first estimate (of its key)
        self._key: object = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------- reading
    @property
    def admitted(self) -> int:
        with self._lock:
            return len(self._tickets)

    @property
    def chars(self) -> int:
        with self._lock:
            return sum(t.chars for t in self._tickets.values())

    @property
    def factor(self) -> float:
        """The correction this arm applies to its predictions (observed / predicted service time)."""
        with self._lock:
            return self._correction.factor if self._correction is not None else 1.0

    def wait_ms(self) -> float:
        """Predicted ms until a worker is free for a request admitted now."""
        with self._lock:
            return self._free_at()[0]

    # ---------------------------------------------------------------------------------- deciding
    def _free_at(self) -> list[float]:
        """When each worker is free (ms from now, a heap) after the running and queued work ahead."""
        now = self.clock()
        running = [t for t in self._tickets.values() if t.started is not None]
        free = [max(t.ms - (now - t.started) * 1000, 0.0) for t in running if t.started is not None]
        free += [0.0] * max(self.workers - len(free), 0)
        heapq.heapify(free)
        for t in self._tickets.values():
            if t.started is None:
                heapq.heappush(free, heapq.heappop(free) + t.ms)
        return free

    def _correction_for(self, estimate: Estimate) -> Correction:
        """The arm's correction; a new one when the arm runs another configuration (what was learnt is stale)."""
        if self._correction is None or (estimate.key is not None and estimate.key != self._key):
            calibrated = estimate.predicted_ms is not None
            self._correction, self._key = Correction(1 if calibrated else 0, self.alpha), estimate.key
        return self._correction

    def admit(self, estimate: Estimate) -> Ticket:
        """Admit the request or raise :class:`Overloaded` (with the seconds after which to retry)."""
        with self._lock:
            correction = self._correction_for(estimate)
            base = max(estimate.predicted_ms if estimate.predicted_ms is not None else self.prior_ms, MIN_MS)
            deadline_ms = max(estimate.deadline_s, 0.0) * 1000
            own = min(base * correction.factor, deadline_ms)
            free = self._free_at()
            held = sum(t.chars for t in self._tickets.values())
            if len(self._tickets) >= self.limit:
                raise Overloaded(self.name, _seconds(self._first_end()), "queue full")
            if self._tickets and held + estimate.chars > self.max_chars:
                raise Overloaded(self.name, _seconds(self._first_end()), "memory bound")
            wait = free[0]
            if wait + own > deadline_ms:
                raise Overloaded(self.name, _seconds(wait + own - deadline_ms), "predicted past deadline")
            ticket = Ticket(next(self._numbers), base, own, estimate.chars, correction)
            self._tickets[ticket.number] = ticket
            return ticket

    def _first_end(self) -> float:
        """Predicted ms until the first admitted request ends (a slot frees)."""
        now = self.clock()
        running = [max(t.ms - (now - t.started) * 1000, 0.0) for t in self._tickets.values() if t.started is not None]
        return min(running, default=0.0)

    # ---------------------------------------------------------------------------------- lifecycle
    def start(self, ticket: Ticket) -> None:
        """A worker picked the request up."""
        with self._lock:
            ticket.started = self.clock()

    def finish(self, ticket: Ticket, *, observe: bool) -> None:
        """The request ended (or was dropped); ``observe``: its service time corrects the predictions."""
        with self._lock:
            self._tickets.pop(ticket.number, None)
            if observe and ticket.started is not None:
                ticket.correction.observe(ticket.base_ms, (self.clock() - ticket.started) * 1000)


def _seconds(ms: float) -> int:
    """Whole seconds for ``Retry-After`` (at least 1)."""
    return max(1, math.ceil(ms / 1000 - 1e-9))


class ArmGate:
    """One arm: a :class:`Ledger` deciding admission and ``workers`` threads running what it admitted."""

    def __init__(self, ledger: Ledger) -> None:
        self.name = ledger.name
        self.ledger = ledger
        self._executor = ThreadPoolExecutor(ledger.workers, thread_name_prefix=f"arm-{ledger.name}")

    @property
    def admitted(self) -> int:
        return self.ledger.admitted

    def submit(
        self, work: Callable[[], T], estimate: Estimate, deadline: Deadline, done: Callable[[], None]
    ) -> Future[T]:
        """Start ``work`` on a worker (or queue it); ``done`` runs when it ends (or was never admitted).

        Raises :class:`Overloaded` when the arm cannot take it.
        """
        try:
            ticket = self.ledger.admit(estimate)
        except Overloaded:
            done()
            raise

        def guarded() -> T:
            if deadline.expired():
                raise Expired(self.name)
            self.ledger.start(ticket)
            return work()

        def release(future: Future[T] | None = None) -> None:
            ok = future is not None and not future.cancelled() and future.exception() is None
            self.ledger.finish(ticket, observe=ok)
            done()

        try:
            future = self._executor.submit(guarded)
        except BaseException:
            release()
            raise
        future.add_done_callback(release)
        return future

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class Admission:
    """One :class:`ArmGate` per arm name, created on first use (arms come and go with experiments)."""

    def __init__(
        self,
        workers: int,
        queue: int,
        *,
        max_chars: int = 10_000_000,
        prior_ms: float = 1000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers, self.queue, self.max_chars, self.prior_ms, self.clock = workers, queue, max_chars, prior_ms, clock
        self._gates: dict[str, ArmGate] = {}
        self._lock = threading.Lock()

    def gate(self, arm: str) -> ArmGate:
        with self._lock:
            gate = self._gates.get(arm)
            if gate is None:
                ledger = Ledger(
                    arm, self.workers, self.queue, max_chars=self.max_chars, prior_ms=self.prior_ms, clock=self.clock
                )
                gate = self._gates[arm] = ArmGate(ledger)
            return gate

    async def run(
        self,
        arm: str,
        work: Callable[[], T],
        estimate: Estimate,
        deadline: Deadline,
        hard_timeout_s: float,
        done: Callable[[], None] = lambda: None,
    ) -> T:
        """Run ``work`` for ``arm`` without blocking the event loop; cancel it cooperatively on timeout.

        ``done`` runs once the work has ended (or was refused). Raises :class:`Overloaded`,
        :class:`Expired`, :class:`TimeoutError` or what ``work`` raised.
        """
        future = self.gate(arm).submit(work, estimate, deadline, done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=hard_timeout_s)
        except TimeoutError:
            deadline.cancel()  # the reranker stops at its next check; the slot is freed when it does
            raise

    def shutdown(self) -> None:
        with self._lock:
            gates = list(self._gates.values())
        for gate in gates:
            gate.shutdown()
