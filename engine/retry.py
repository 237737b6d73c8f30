"""The one exponential back-off rule every retry loop uses (bulk ingest, HTTP clients).

Retry ``attempt`` (1 for the first retry) waits "equal jitter" (Brooker, *Exponential Backoff And
Jitter*, AWS Architecture Blog, 2015): with ``d = min(cap, base × 2**(attempt - 1))``, a uniform draw
from ``[d/2, d]``. The random half spreads clients that failed together (parallel bulk requests hit by
the same 429) so they do not retry in lockstep; the fixed half keeps the exponential growth, so a
retry never comes sooner than half the un-jittered delay. When the server said how long to wait (an
HTTP ``Retry-After``), that is a floor: the delay is at least that, still at most ``cap``. Pass ``rng``
(a seeded :class:`random.Random`) for a reproducible sequence.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from twostage_search.engine.errors import InputError


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to sleep before retry number ``attempt`` (1-based), in ``[d/2, d]`` for the capped
    exponential delay ``d``, and at least ``retry_after`` (the server's wish) up to ``cap``.

    ``rng`` draws the jitter (a fresh, OS-seeded generator when None).
    """
    if attempt < 1:
        raise InputError(f"attempt counts from 1, got {attempt}")
    if base < 0 or cap < 0:
        raise InputError("back-off base and cap must be non-negative")
    # 2**1100 overflows a float: past 64 doublings the cap has long been reached.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    delay = (rng or random.Random()).uniform(ceiling / 2, ceiling)
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, retry_after)
    return min(cap, delay)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """An HTTP ``Retry-After`` header as seconds from ``now`` (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:  # delta-seconds; some servers send a fraction ("0.5"), which we take too
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
