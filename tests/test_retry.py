"""The one back-off rule (engine/retry.py): doubling from ``base``, capped, a longer Retry-After wins."""

from datetime import UTC, datetime

import pytest

from twostage_search.engine.errors import InputError
from twostage_search.engine.retry import backoff_delay, parse_retry_after


def test_doubles_from_base_up_to_the_cap():
    assert [backoff_delay(a, base=0.5, cap=3.0) for a in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(10_000, base=1.0, cap=30.0) == 30.0  # no float overflow


def test_a_longer_retry_after_wins_but_not_past_the_cap():
    assert backoff_delay(1, base=0.5, cap=30.0, retry_after=7.0) == 7.0
    assert backoff_delay(3, base=0.5, cap=30.0, retry_after=1.0) == 2.0
    assert backoff_delay(1, base=0.5, cap=5.0, retry_after=120.0) == 5.0


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
