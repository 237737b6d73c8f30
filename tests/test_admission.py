"""Admission by predicted cost: the decisions driven with given predictions and a fake clock, and one
check through the app that the cheap arm is served while the expensive one is full.

Every expected number is worked out by hand in the comments (FIFO queue, ``workers`` threads, each
request taking its predicted time); no test measures time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import need

need("fastapi", "service")

import yaml
from fastapi.testclient import TestClient

from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.service.admission import Admission, Correction, Estimate, Ledger, Overloaded
from twostage_search.service.app import create_app
from twostage_search.service.settings import Settings


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def refused(ledger: Ledger, estimate: Estimate) -> Overloaded:
    with pytest.raises(Overloaded) as info:
        ledger.admit(estimate)
    return info.value


# ------------------------------------------------------------------------------- per-arm decisions
def test_cheap_arm_keeps_admitting_while_expensive_arm_sheds() -> None:
    clock = Clock()
    admission = Admission(workers=2, queue=64, clock=clock)
    ce, control = admission.gate("ce").ledger, admission.gate("control").ledger
    try:
        # ce: 1500 ms each, 5 s deadline, 2 workers. The n-th request waits for the (n-2) ahead of it
        # two at a time: waits 0, 0, 1500, 1500, 3000, 3000 ms; +1500 fits 5000 for the first six.
        expensive = Estimate(1500.0, 5.0)
        for _ in range(6):
            ce.admit(expensive)
        assert ce.wait_ms() == 4500.0
        # the 7th: 4500 + 1500 = 6000 > 5000; it fits once 1000 ms of work have drained: 1 s
        seventh = refused(ce, expensive)
        assert (seventh.retry_after_s, seventh.reason) == (1, "predicted past deadline")
        # a shorter deadline must wait for more to drain: 4500 + 1500 - 2000 = 4000 ms -> 4 s
        assert refused(ce, Estimate(1500.0, 2.0)).retry_after_s == 4
        # control: 10 ms each on its own workers, unaffected by ce's queue: 64 + 2 admitted
        cheap = Estimate(10.0, 27.0)
        for _ in range(66):
            control.admit(cheap)
        assert control.admitted == 66 and control.wait_ms() == 330.0  # 66 x 10 ms over 2 workers
        assert refused(control, cheap).reason == "queue full"  # the hard bound, not the prediction
        assert ce.admitted == 6  # and the expensive arm still sheds
        assert refused(ce, expensive).reason == "predicted past deadline"
    finally:
        admission.shutdown()


def test_retry_after_is_the_predicted_drain_time() -> None:
    clock = Clock()
    arm = Ledger("ce", workers=2, queue=10, clock=clock)
    a = arm.admit(Estimate(1000.0, 60.0))
    b = arm.admit(Estimate(3000.0, 60.0))
    c = arm.admit(Estimate(2000.0, 60.0))  # queued behind a and b
    arm.start(a), arm.start(b)  # at t = 0
    clock.t = 0.5
    # running: a 500 ms left, b 2500 ms left; c starts when a ends (500) and ends at 2500:
    # both workers free at 2500 ms. A 1500 ms request with a 1.6 s deadline: 2500 + 1500 - 1600 = 2400 ms
    d = Estimate(1500.0, 1.6)
    assert arm.wait_ms() == 2500.0
    assert refused(arm, d).retry_after_s == 3  # 2.4 s, rounded up to whole seconds
    clock.t = 1.0
    arm.finish(a, observe=False)
    arm.start(c)
    clock.t = 2.75  # b and c each 250 ms from the end: 250 + 1500 > 1600
    assert refused(arm, d).retry_after_s == 1
    clock.t = 2.875  # 125 + 1500 > 1600
    refused(arm, d)
    clock.t = 2.9375  # 62.5 + 1500 <= 1600: drained as predicted, d fits
    arm.admit(d)


def test_a_request_longer_than_its_deadline_runs_on_a_free_worker() -> None:
    clock = Clock()
    arm = Ledger("llm", workers=1, queue=10, clock=clock)
    first = arm.admit(Estimate(90_000.0, 20.0))  # capped at its 20 s deadline (the stages stop there)
    assert arm.wait_ms() == 20_000.0
    arm.start(first)
    clock.t = 5.0
    # the next one waits 15 s and would take its whole 20 s deadline: 15 s past it
    assert refused(arm, Estimate(90_000.0, 20.0)).retry_after_s == 15


def test_hard_bounds_on_queued_requests_and_held_characters() -> None:
    clock = Clock()
    arm = Ledger("a", workers=1, queue=2, max_chars=100, clock=clock)
    free = Estimate(0.0, 10.0, chars=10)
    tickets = [arm.admit(free) for _ in range(3)]  # 1 running + 2 queued, all predicted instant
    full = refused(arm, free)
    assert (full.reason, full.retry_after_s, arm.admitted) == ("queue full", 1, 3)
    arm.finish(tickets[0], observe=False)
    tickets[0] = arm.admit(free)
    for t in tickets:
        arm.finish(t, observe=False)
    assert arm.admitted == 0 and arm.chars == 0
    big = arm.admit(Estimate(0.0, 10.0, chars=60))
    assert refused(arm, Estimate(0.0, 10.0, chars=50)).reason == "memory bound"  # 60 + 50 > 100
    arm.admit(Estimate(0.0, 10.0, chars=40))  # 60 + 40 = 100
    assert arm.chars == 100
    arm.finish(big, observe=False)
    assert arm.chars == 40
    # one request larger than the bound is still served on an empty arm (its own size is capped by the caps)
    lone = Ledger("b", workers=1, queue=2, max_chars=100, clock=clock)
    lone.admit(Estimate(0.0, 10.0, chars=150))


def run_one(arm: Ledger, clock: Clock, estimate: Estimate, observed_s: float) -> None:
    ticket = arm.admit(estimate)
    arm.start(ticket)
    clock.t += observed_s
    arm.finish(ticket, observe=True)


def test_online_correction_converges_on_a_miscalibrated_model() -> None:
    clock = Clock()
    arm = Ledger("ce", workers=1, queue=10, clock=clock)
    model_says = Estimate(100.0, 60.0)  # the cost model predicts 100 ms; the arm takes 250 ms
    # the fitted model counts as one observation: weights 1/2, 1/3, 1/4, 1/5, then 0.2 for ever
    expected = [1.75, 2.0, 2.125, 2.2]
    for want in expected:
        run_one(arm, clock, model_says, 0.25)
        assert arm.factor == pytest.approx(want, rel=1e-12)
    for _ in range(50):
        run_one(arm, clock, model_says, 0.25)
    assert arm.factor == pytest.approx(2.5 - 0.3 * 0.8**50, rel=1e-12)  # error shrinks by 0.8 each time
    ticket = arm.admit(model_says)
    assert arm.wait_ms() == pytest.approx(250.0, rel=1e-5)  # the next one now waits the true 250 ms
    arm.finish(ticket, observe=False)
    # a failed or dropped request teaches nothing
    before = arm.factor
    ticket = arm.admit(model_says)
    arm.start(ticket)
    clock.t += 5.0
    arm.finish(ticket, observe=False)
    assert arm.factor == before


def test_an_arm_without_a_cost_model_learns_from_its_first_request() -> None:
    clock = Clock()
    arm = Ledger("control", workers=1, queue=10, prior_ms=1000.0, clock=clock)
    unknown = Estimate(None, 27.0)
    assert Ledger("fresh", workers=1, queue=10, prior_ms=1000.0, clock=clock).admit(unknown).ms == 1000.0
    run_one(arm, clock, unknown, 0.0078125)  # 7.8125 ms (exact in binary)
    assert arm.factor == 0.0078125  # the first observation replaces the prior
    assert arm.admit(unknown).ms == 7.8125


def test_corrections_are_per_arm_and_reset_with_the_configuration() -> None:
    clock = Clock()
    admission = Admission(workers=1, queue=10, clock=clock)
    try:
        slow, other = admission.gate("slow").ledger, admission.gate("other").ledger
        run_one(slow, clock, Estimate(100.0, 60.0, key="v1"), 0.5)  # 5x the model: factor 1 + (5 - 1)/2 = 3
        assert slow.factor == 3.0 and other.factor == 1.0
        assert other.admit(Estimate(100.0, 60.0, key="v1")).ms == 100.0  # not learnt from "slow"
        assert slow.admit(Estimate(100.0, 60.0, key="v2")).ms == 100.0  # new configuration: starts afresh
    finally:
        admission.shutdown()


def test_correction_ignores_unusable_observations() -> None:
    c = Correction(prior_weight=1)
    c.observe(0.0, 10.0)
    c.observe(100.0, float("nan"))
    assert (c.factor, c.seen) == (1.0, 0)


# ------------------------------------------------------------------------------------- through the app
class Held:
    """Three fixed candidates; queries containing "block" wait until ``open`` is set."""

    def __init__(self) -> None:
        self.open, self.entered = threading.Event(), threading.Semaphore(0)

    def retrieve(self, query: Query, k: int) -> RankedList:
        if "block" in query.text:
            self.entered.release()
            assert self.open.wait(60)
        docs = [Candidate(f"d{i}", 3.0 - i, f"text {i}") for i in range(3)]
        return RankedList.from_candidates(query.query_id, docs, k)


def test_control_arm_is_served_while_the_expensive_arm_is_full(tmp_path: Path) -> None:
    arms = [
        {"name": "control", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 3},
        {"name": "ce", "weight": 0.5, "reranker": {"name": "identity"}, "depth": 3, "budget_ms": 20_000},
    ]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "adm", "arms": arms}))
    # no cost model: every arm starts at the 60 s prior; "ce" has a 20 s budget, so one running request
    # (capped at 20 s) leaves no room for another until it has run 20 s
    settings = Settings(
        index=tmp_path / "unused",
        experiment=exp,
        warmup=False,
        workers=1,
        queue=64,
        admission_prior_ms=60_000,
        allow_overrides=True,
        log_enabled=False,
    )
    held = Held()
    with (
        TestClient(create_app(settings, retriever=held), raise_server_exceptions=False) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(c.post, "/search", json={"query": "block tides", "arm": "ce"})
        assert held.entered.acquire(timeout=60)
        r = c.post("/search", json={"query": "tides", "arm": "ce"})
        assert r.status_code == 429 and r.json()["error"] == "overloaded"
        assert "predicted past deadline" in r.json()["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 20
        ok = c.post("/search", json={"query": "tides", "arm": "control"})
        assert ok.status_code == 200 and ok.json()["arm"] == "control"
        held.open.set()
        assert first.result().status_code == 200
        gate = c.app.state.service.admission.gate("ce")
        for _ in range(600):  # the slot is freed by the worker's callback, just after the answer
            if gate.admitted == 0:
                break
            time.sleep(0.05)
        assert gate.admitted == 0
        assert 'twostage_rejected_total{arm="ce",reason="overloaded"} 1.0' in c.get("/metrics").text
