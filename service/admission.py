"""Admission control: a bounded number of requests in flight and a bounded queue per arm.

Each arm has its own worker threads (``in_flight``) and admits at most ``in_flight + queue`` requests
at once; the next one is refused at once (429 with Retry-After) instead of waiting, so an overloaded arm
answers fast and the others are not starved. A slot is released when the work finishes — not when a
timed-out client gives up — so the bound holds for the threads too. Work that waited in the queue past
its deadline is dropped before it starts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from twostage_search.engine.deadline import Deadline

T = TypeVar("T")


class Overloaded(Exception):
    """The arm's in-flight slots and queue are full."""


class Expired(Exception):
    """The request's deadline passed while it waited in the queue; it was not started."""


class ArmGate:
    """``in_flight`` worker threads and room for ``queue`` more requests waiting for one."""

    def __init__(self, name: str, in_flight: int, queue: int) -> None:
        self.name = name
        self.limit = in_flight + queue
        self._admitted = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(in_flight, thread_name_prefix=f"arm-{name}")

    @property
    def admitted(self) -> int:
        with self._lock:
            return self._admitted

    def submit(self, work: Callable[[], T], deadline: Deadline, done: Callable[[], None]) -> Future[T]:
        """Start ``work`` on a worker (or queue it); ``done`` runs when it ends (or was never admitted).

        Raises :class:`Overloaded` when full.
        """
        with self._lock:
            if self._admitted >= self.limit:
                done()
                raise Overloaded(self.name)
            self._admitted += 1

        def guarded() -> T:
            if deadline.expired():
                raise Expired(self.name)
            return work()

        def release(_: object = None) -> None:
            with self._lock:
                self._admitted -= 1
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

    def __init__(self, in_flight: int, queue: int) -> None:
        self.in_flight, self.queue = in_flight, queue
        self._gates: dict[str, ArmGate] = {}
        self._lock = threading.Lock()

    def gate(self, arm: str) -> ArmGate:
        with self._lock:
            gate = self._gates.get(arm)
            if gate is None:
                gate = self._gates[arm] = ArmGate(arm, self.in_flight, self.queue)
            return gate

    async def run(
        self,
        arm: str,
        work: Callable[[], T],
        deadline: Deadline,
        hard_timeout_s: float,
        done: Callable[[], None] = lambda: None,
    ) -> T:
        """Run ``work`` for ``arm`` without blocking the event loop; cancel it cooperatively on timeout.

        ``done`` runs once the work has ended (or was refused). Raises :class:`Overloaded`,
        :class:`Expired`, :class:`TimeoutError` or what ``work`` raised.
        """
        future = self.gate(arm).submit(work, deadline, done)
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
