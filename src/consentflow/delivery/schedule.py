"""When a failed delivery is tried again: a persisted, multi-day schedule with jitter.

The default is the Standard Webhooks example schedule: the first attempt at once, then 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h after each failure (ten attempts over about 75 hours).
Each delay gets +/-20 % jitter, so endpoints that fail together do not retry in lock step. A
receiver that says "slow down" (429, 502, 503, 504, or a timeout) waits twice as long, at least a
minute, and never less than its ``Retry-After``; no single wait exceeds a day (plus jitter).
The next attempt's time is stored in ``delivery.next_attempt_at``, so the schedule survives any
restart.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

#: Seconds to wait before attempt n+1 after attempt n failed; index 0 is the first attempt.
DEFAULT_SCHEDULE: tuple[int, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
MAX_ATTEMPTS = len(DEFAULT_SCHEDULE)
JITTER = 0.2
SLOW_DOWN_STATUSES = frozenset({429, 502, 503, 504})
MAX_DELAY = timedelta(hours=24)
MIN_SLOW_DOWN = timedelta(minutes=1)


def next_delay(
    attempts_done: int,
    *,
    slow_down: bool = False,
    retry_after: timedelta | None = None,
    rng: random.Random | None = None,
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE,
) -> timedelta | None:
    """How long to wait after ``attempts_done`` attempts have all failed; None: give up."""
    if attempts_done >= len(schedule):
        return None
    delay = timedelta(seconds=schedule[attempts_done])
    if slow_down:
        delay = max(delay * 2, MIN_SLOW_DOWN)
    delay = min(delay, MAX_DELAY)
    factor = 1 + (rng or random).uniform(-JITTER, JITTER)
    delay = delay * factor
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_DELAY))
    return delay


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` as seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))
