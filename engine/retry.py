"""The one exponential back-off rule every retry loop uses (bulk ingest, HTTP clients).

Retry ``attempt`` (1 for the first retry) waits ``base × 2**(attempt - 1)`` seconds, at most ``cap``.
When the server said how long to wait (an HTTP ``Retry-After``), that wins when it is longer, still at
most ``cap``. No jitter: callers here retry few requests, and a deterministic delay is testable.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from twostage_search.engine.errors import InputError


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds to sleep before retry number ``attempt`` (1-based)."""
    if attempt < 1:
        raise InputError(f"attempt counts from 1, got {attempt}")
    if base < 0 or cap < 0:
        raise InputError("back-off base and cap must be non-negative")
    # 2**1100 overflows a float: past 64 doublings the cap has long been reached.
    delay = base * 2.0 ** min(attempt - 1, 64)
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
