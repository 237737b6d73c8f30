"""The one back-off rule (engine/retry.py): doubling from ``base``, capped, equal jitter (a draw from
the upper half), a longer Retry-After wins."""

import random
from datetime import UTC, datetime

import pytest

from twostage_search.engine.errors import InputError
from twostage_search.engine.retry import backoff_delay, parse_retry_after


class Fixed(random.Random):
    """A generator whose every draw is ``u``: 0.0 gives the lowest jittered delay, 1.0 the highest."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


LOW, HIGH = Fixed(0.0), Fixed(1.0)


def test_doubles_from_base_up_to_the_cap():
    assert [backoff_delay(a, base=0.5, cap=3.0, rng=HIGH) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(10_000, base=1.0, cap=30.0, rng=HIGH) == 30.0  # no float overflow


def test_equal_jitter_draws_from_the_upper_half():
    assert [backoff_delay(a, base=0.5, cap=3.0, rng=LOW) for a in range(1, 6)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert backoff_delay(2, base=0.5, cap=3.0, rng=Fixed(0.5)) == 0.75  # 0.5 + (1.0 - 0.5) × 0.5
    bounds = {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0), 4: (2.5, 5.0)}  # base 1, cap 5
    rng = random.Random(7)
    draws = {a: [backoff_delay(a, base=1.0, cap=5.0, rng=rng) for _ in range(200)] for a in bounds}
    for attempt, (low, high) in bounds.items():
        assert all(low <= d <= high for d in draws[attempt]), attempt
        assert len(set(draws[attempt])) == 200  # spread out, not one value
    again = random.Random(7)
    assert [backoff_delay(1, base=1.0, cap=5.0, rng=again) for _ in range(200)] == draws[1]  # seeded: reproducible
    assert all(0.5 <= backoff_delay(1, base=1.0, cap=5.0) <= 1.0 for _ in range(50))  # default generator


def test_a_longer_retry_after_wins_but_not_past_the_cap():
    assert backoff_delay(1, base=0.5, cap=30.0, retry_after=7.0, rng=HIGH) == 7.0
    assert backoff_delay(3, base=0.5, cap=30.0, retry_after=1.0, rng=HIGH) == 2.0
    assert backoff_delay(3, base=0.5, cap=30.0, retry_after=1.5, rng=LOW) == 1.5  # a floor under the jitter
    assert backoff_delay(1, base=0.5, cap=5.0, retry_after=120.0, rng=LOW) == 5.0


def test_bad_arguments():
    with pytest.raises(InputError):
        backoff_delay(0, base=1.0, cap=1.0)
    with pytest.raises(InputError):
        backoff_delay(1, base=-1.0, cap=1.0)


def test_parse_retry_after():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12", now=now) == 12.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("0.5") == 0.5 and parse_retry_after("-3") == 0.0  # fractions and clamps
