"""Report rows: what happened under a scope (or to one dimension value) in one period, from
counters both stores keep per UTC day as `day|scope|counter`.

Where a counter is kept says what it means:
- a call's activity (reservations, commits, releases, expiries, records, reserved and
  committed amounts) is counted at the call's subject scope, and at that scope plus each of the
  call's dimensions (`tenant:acme/workspace:w/user:u-1`); a scope row adds up every call at or
  under it, a dimension row every call of the tenant that carried that value;
- a denial (or, in shadow mode, a would-be denial, `observed:REASON`) is counted at the scope
  whose limit refused the call, and an exhaustion at the ledger that ran out (a run ledger is
  `.../agent:a/run:r1`): these belong to that scope or dimension row alone, never to the rows
  above it, so a run running out is not read as the tenant running out.

Counters are kept for the last `REPORT_RETENTION_DAYS` days (a store setting) and reads fetch
only the days of the period asked for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from .amounts import Unit
from .errors import InvalidRequest
from .periods import Period, bucket, bucket_end_ms, bucket_start_ms
from .scopes import LEVELS, Subject
from .validation import check_int, check_key, shown

REPORT_RETENTION_DAYS = 92
"""Days of report counters a store keeps by default: today and the 91 before it, so the
current month and at least the two full months before it can always be reported."""

RATIO_PLACES = Decimal("0.0001")
"""`committed_ratio()` is rounded to four decimal places (half to even): a ratio is read by
people; the amounts it is made from stay exact integers."""

DAY_MS = 86_400_000
LEDGER_EVENTS = frozenset({"denials", "exhaustions"})
"""Counters that belong to the scope they happened at alone (never added to the rows above)."""
_TALLIES = frozenset({"denials", "reserved", "committed"})
_UNIT_ORDER = tuple(Unit)


@dataclass(slots=True)
class ReportRow:
    """What happened under one scope (or to one dimension value) in one period: the numbers
    that size a limit."""

    scope: str
    period: str
    reservations: int = 0
    commits: int = 0
    releases: int = 0
    expiries: int = 0
    records: int = 0
    denials: dict[str, int] = field(default_factory=dict)
    reserved: dict[Unit, int] = field(default_factory=dict)
    committed: dict[Unit, int] = field(default_factory=dict)
    exhaustions: int = 0

    def committed_ratio(self, unit: Unit = Unit.USD_MICROCENTS) -> Decimal | None:
        """committed ÷ reserved, to four places: how tight estimates are (1 = exact, small =
        over-reserving); None when nothing was reserved in `unit`."""
        reserved = self.reserved.get(unit, 0)
        if not reserved:
            return None
        ratio = Decimal(self.committed.get(unit, 0)) / Decimal(reserved)
        return ratio.quantize(RATIO_PLACES, rounding=ROUND_HALF_EVEN)

    def _spend(self) -> tuple[int, ...]:
        return tuple(self.committed.get(unit, 0) for unit in _UNIT_ORDER)


def check_retention(days: object) -> int:
    """The report retention a store is given: whole days, at least one."""
    try:
        return check_int(days, "report_retention_days", 1, 100_000)
    except InvalidRequest as error:
        raise InvalidRequest(f"{error}; give the number of days of report counters to keep "
                             f"(default {REPORT_RETENTION_DAYS})") from None


def check_by(value: object) -> str | None:
    """A report's `by`: None for rows per scope, or a dimension key for rows per value."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"by: expected a dimension key such as 'user' or 'run', got "
                             f"{shown(value)}")
    key = check_key(value, "by")
    if key in LEVELS:
        raise InvalidRequest(f"by: {key!r} is a scope level, and the rows without `by` are "
                             "already one per scope; give a dimension key such as 'user'")
    return key


def check_top(value: object) -> int | None:
    """A report's `top`: None for every row, or how many of the busiest to keep."""
    if value is None:
        return None
    return check_int(value, "top", 1, 100_000)


def report_scopes(subject: Subject) -> tuple[str, ...]:
    """Where a call's activity is counted: its subject scope, then that scope with each of its
    dimensions (as `report_scopes` in common.lua)."""
    return report_paths(subject.scope_path, subject.dimension_items)


def report_paths(path: str, dimensions: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """`report_scopes` of a subject at `path` with these (canonical) dimension items."""
    return (path, *[f"{path}/{key}:{value}" for key, value in dimensions])


def day_number(ms: int) -> int:
    """The UTC day an instant falls on, counted from 1970-01-01 (day 0)."""
    return ms // DAY_MS


def report_days(period: Period, at_ms: int, now_ms: int, retention: int) -> range:
    """The days whose counters make up the period containing `at_ms`, less those past the
    retention at `now_ms` (as `report_days` in read.lua)."""
    first = day_number(bucket_start_ms(period, at_ms))
    last = day_number(bucket_end_ms(period, at_ms)) - 1
    return range(max(first, day_number(now_ms) - retention + 1), last + 1)


def dimension_of(scope: str) -> tuple[str, str] | None:
    """The trailing dimension of a counter's scope (`.../user:u-1` -> ("user", "u-1"))."""
    last = scope.rsplit("/", 1)[-1]
    key, _, value = last.partition(":")
    return None if key in LEVELS else (key, value)


def report_rows(counts: Mapping[str, int], period: Period, at_ms: int, by: str | None = None,
                top: int | None = None) -> tuple[ReportRow, ...]:
    """Rows for the period containing `at_ms` from counters kept as `day|scope|counter`:
    one per scope (activity added up into every scope above; denials and exhaustions where
    they happened) or, `by` a dimension key, one per value of it across the tenant. Rows per
    scope come in scope order; rows per value, and the `top` busiest of either, by committed
    spend (USD first, then tokens, credits, risk points), most first."""
    label = bucket(period, at_ms)
    rows: dict[str, ReportRow] = {}
    for key, n in counts.items():
        day, scope, counter = key.split("|", 2)
        if bucket(period, day_number_ms(day)) != label:
            continue
        name, _, arg = counter.partition(":")
        dimension = dimension_of(scope)
        if by is None:
            if dimension is not None:
                continue
            if name in LEDGER_EVENTS:
                targets: Iterable[str] = (scope,)
            else:
                parts = scope.split("/")
                targets = ("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        else:
            if dimension is None or dimension[0] != by:
                continue
            targets = (f"{scope.split('/', 1)[0]}/{by}:{dimension[1]}",)
        for target in targets:
            row = rows.get(target)
            if row is None:
                row = rows[target] = ReportRow(target, label)
            _add(row, name, arg, n)
    ordered = [rows[scope] for scope in sorted(rows)]
    if by is not None or top is not None:
        ordered.sort(key=ReportRow._spend, reverse=True)  # stable: ties keep scope order
    return tuple(ordered if top is None else ordered[:top])


def _add(row: ReportRow, name: str, arg: str, n: int) -> None:
    if name in _TALLIES:
        tally: dict[Any, int] = getattr(row, name)
        item: Any = arg if name == "denials" else Unit(arg)
        tally[item] = tally.get(item, 0) + n
    else:
        setattr(row, name, getattr(row, name) + n)


def day_number_ms(day: str) -> int:
    """The first millisecond of a `YYYY-MM-DD` day label."""
    year, month, date = (int(part) for part in day.split("-"))
    return int(datetime(year, month, date, tzinfo=timezone.utc).timestamp()) * 1000
