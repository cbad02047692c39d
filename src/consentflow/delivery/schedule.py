"""When a failed delivery is tried again: a persisted, multi-day schedule with jitter.

The default is the Standard Webhooks example schedule: the first attempt at once, then 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h after each failure (ten attempts over about 75 hours).
Each delay gets +/-20 % jitter, so endpoints that fail together do not retry in lock step. A
receiver that says "slow down" (429, 502, 503, 504, or a timeout) waits twice as long, at least a
minute, and never less than its ``Retry-After``; no single wait exceeds a day (plus jitter).
``Retry-After`` is read strictly (ASCII digits or an RFC 9110 HTTP-date, capped at a day):
whatever a receiver sends in it, parsing never raises; anything else is ignored.
The next attempt's time is stored in ``delivery.next_attempt_at``, so the schedule survives any
restart.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

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


#: The longest ``Retry-After`` taken from a receiver (longer values are capped to it).
MAX_RETRY_AFTER = MAX_DELAY

_SECONDS = re.compile(r"[0-9]+", re.ASCII)
_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = f"(?P<month>{'|'.join(_MONTHS)})"
_TIME = r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
#: RFC 9110 section 5.6.7: IMF-fixdate, then the obsolete RFC 850 and asctime forms.
_HTTP_DATES = (
    re.compile(rf"{_DAY}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT", re.ASCII),
    re.compile(
        rf"{_LONG_DAY}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<yy>[0-9]{{2}}) {_TIME} GMT", re.ASCII
    ),
    re.compile(rf"{_DAY} {_MONTH} (?P<day>[ 0-9][0-9]) {_TIME} (?P<year>[0-9]{{4}})", re.ASCII),
)


def parse_retry_after(value: str | None, now: datetime) -> timedelta | None:
    """``Retry-After`` (RFC 9110 section 10.2.3): ASCII digits (seconds) or an HTTP-date,
    capped at ``MAX_RETRY_AFTER``; a date in the past is zero. None if absent or anything else
    (never raises, whatever the receiver sent)."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        if len(digits) > 9:  # over 31 years: capped without converting an absurd number
            return MAX_RETRY_AFTER
        return min(timedelta(seconds=int(digits)), MAX_RETRY_AFTER)
    when = parse_http_date(value, now)
    if when is None:
        return None
    return min(max(when - now, timedelta(0)), MAX_RETRY_AFTER)


def parse_http_date(value: str, now: datetime) -> datetime | None:
    """An HTTP-date in any of its three forms (case-sensitive, GMT), or None."""
    for pattern in _HTTP_DATES:
        m = pattern.fullmatch(value)
        if m is None:
            continue
        fields = m.groupdict()
        if fields.get("yy") is not None:
            # RFC 850's two-digit year: never more than 50 years ahead (RFC 9110)
            year = now.year // 100 * 100 + int(fields["yy"])
            if year > now.year + 50:
                year -= 100
        else:
            year = int(fields["year"])
        try:
            return datetime(
                year,
                _MONTHS.index(fields["month"]) + 1,
                int(fields["day"]),
                int(fields["h"]),
                int(fields["m"]),
                int(fields["s"]),
                tzinfo=UTC,
            )
        except ValueError:  # 31 Feb, 25 o'clock, year 0
            return None
    return None
