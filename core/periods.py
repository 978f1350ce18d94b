"""Calendar periods in UTC: a bucket label for any instant, and when that bucket ends.

A ledger is keyed by its bucket and created on first touch, so no reset job exists that
could be missed or applied twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from enum import Enum

from .errors import InvalidRequest
from .validation import shown


class Period(str, Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


def parse_period(value: object) -> Period | None:
    if value is None or isinstance(value, Period):
        return value
    try:
        if not isinstance(value, str) or not value.isascii():
            raise ValueError(value)  # ASCII first: "wee\u212a" must not lower to "week"
        return Period(value.lower())
    except ValueError:
        names = ", ".join(p.value for p in Period)
        raise InvalidRequest(f"period: {shown(value)} is not a period; use one of {names} "
                             "or None") from None


def _start(period: Period, at: datetime) -> datetime:
    if period is Period.MINUTE:
        return at.replace(second=0, microsecond=0)
    if period is Period.HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - timedelta(days=day.weekday())
    if period is Period.MONTH:
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _next(period: Period, start: datetime) -> datetime:
    if period is Period.MINUTE:
        return start + timedelta(minutes=1)
    if period is Period.HOUR:
        return start + timedelta(hours=1)
    if period is Period.DAY:
        return start + timedelta(days=1)
    if period is Period.WEEK:
        return start + timedelta(weeks=1)
    if period is Period.MONTH:
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


_labels: dict[tuple[Period, int], str] = {}


def bucket(period: Period | None, now_ms: int) -> str:
    """`2026-11` for a month, `2026-W48` for an ISO week, `` for a budget without a period."""
    if period is None:
        return ""
    # Every bucket starts on a whole UTC minute, so the label of a minute never changes.
    memo = (period, now_ms // 60_000)
    label = _labels.get(memo)
    if label is None:
        if len(_labels) > 4096:
            _labels.clear()
        label = _labels[memo] = _label(period, now_ms)
    return label


def _label(period: Period, now_ms: int) -> str:
    start = _start(period, datetime.fromtimestamp(now_ms // 1000, timezone.utc))
    if period is Period.WEEK:
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    formats = {Period.MINUTE: "%Y-%m-%dT%H:%M", Period.HOUR: "%Y-%m-%dT%H",
               Period.DAY: "%Y-%m-%d", Period.MONTH: "%Y-%m", Period.YEAR: "%Y"}
    return start.strftime(formats[period])


def bucket_end_ms(period: Period, now_ms: int) -> int:
    """The first millisecond of the next bucket."""
    start = _start(period, datetime.fromtimestamp(now_ms // 1000, timezone.utc))
    return int(_next(period, start).timestamp()) * 1000


def bucket_start_ms(period: Period, now_ms: int) -> int:
    """The first millisecond of the bucket containing `now_ms`."""
    start = _start(period, datetime.fromtimestamp(now_ms // 1000, timezone.utc))
    return int(start.timestamp()) * 1000
