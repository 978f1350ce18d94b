"""Usage for invoicing: what each tenant used, per scope, model and unit, in one period, from
counters both stores keep per UTC day beside the report counters.

Where a call is counted (what we chose):
- a committed or recorded call is counted once, at its subject scope (dimensions left out) and
  its action's name (the model, `openai:gpt-4o`): one call, what it was charged in each unit,
  and the provider's token counts when the commit or record carried them (`usage=`);
- a denied reservation counts one denial there, with its estimate's units at zero spend (so a
  model that was only ever refused still has its rows); a shadow-mode would-be denial is not a
  denial (the call went ahead and is counted as a call);
- a commit is counted on the day its reservation was made: the day whose ledgers it charged,
  so a period's rows add up to what that period's ledgers were charged (`spent + debt`), even
  for a call reserved at 23:59:59 on the last day of a month and committed after midnight.

A day's counters of one (scope, model) are integers the store adds to in its atomic step (on
Redis one hash field each, written with HINCRBY: a commit writes two, its call and its spend).
They are kept as long as the report counters (`report_retention_days`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import IO, Any, NamedTuple

from .amounts import Unit
from .errors import InvalidRequest
from .pricing import TokenUsage
from .reports import DAY_MS
from .validation import shown

TokenCounts = tuple[int, int, int, int, int]
"""Input (cache reads and writes included), cached (cache reads), cache writes, output
(reasoning included), reasoning: `TokenUsage`'s convention, as integers."""
NO_TOKENS: TokenCounts = (0, 0, 0, 0, 0)
COUNTERS = 7
"""calls, denials, then the five token counts: the integers a day's (scope, model) keeps."""
_UNIT_ORDER = {unit: i for i, unit in enumerate(Unit)}
USAGE_FORMATS = ("csv", "json")
COLUMNS = ("tenant", "period", "scope", "model", "unit", "spend", "amount", "calls", "denials",
           "input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens",
           "reasoning_tokens")
"""The columns of an export, in order (CSV header, JSON keys)."""


def token_counts(usage: object) -> TokenCounts | None:
    """The counts a commit or record carries from `usage=` (an `al.TokenUsage`, or None)."""
    if usage is None:
        return None
    if not isinstance(usage, TokenUsage):
        raise InvalidRequest(f"usage: expected an al.TokenUsage (the provider's token counts) "
                             f"or None, got {shown(usage)}")
    return (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
            usage.output_tokens, usage.reasoning_tokens)


# -- periods ---------------------------------------------------------------------------------

class Span(NamedTuple):
    """A usage period: its label and its first and last day (days since 1970-01-01)."""

    label: str
    first: int
    last: int


def check_period(value: object) -> str | None:
    """A usage period: "YYYY-MM" (a month) or "YYYY-MM-DD" (a day), UTC; None for the store's
    current month."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) in (7, 10):
        try:
            span(value)
            return value
        except ValueError:
            pass
    raise InvalidRequest(f"period: {shown(value)} is not a month or a day; write it as "
                         "'2026-11' or '2026-11-28' (UTC)")


def span(label: str) -> Span:
    """The days of a checked period label."""
    if len(label) == 7:
        year, month = int(label[:4]), int(label[5:])
        if label[4] != "-" or not label[5:].isdigit() or not label[:4].isdigit():
            raise ValueError(label)
        start = date(year, month, 1)
        end = date(year + month // 12, month % 12 + 1, 1)
        return Span(label, _day(start), _day(end) - 1)
    if not (label[4] == label[7] == "-" and label[:4].isdigit() and label[5:7].isdigit()
            and label[8:].isdigit()):
        raise ValueError(label)
    day = _day(date(int(label[:4]), int(label[5:7]), int(label[8:])))
    return Span(label, day, day)


def _day(when: date) -> int:
    return (when - date(1970, 1, 1)).days


def current_span(now_ms: int) -> Span:
    """The month containing `now_ms`."""
    today = date.fromordinal(date(1970, 1, 1).toordinal() + now_ms // DAY_MS)
    return span(f"{today.year:04d}-{today.month:02d}")


def day_label(day: int) -> str:
    """`YYYY-MM-DD` of a day number."""
    return date.fromordinal(date(1970, 1, 1).toordinal() + day).isoformat()


# -- what a store keeps and answers ----------------------------------------------------------

@dataclass(slots=True)
class Tally:
    """One day's counters of one (scope, model): calls, denials, token counts, and the spend
    per unit (a unit is listed once a call or denial of it was counted)."""

    numbers: list[int] = field(default_factory=lambda: [0] * COUNTERS)
    spend: dict[Unit, int] = field(default_factory=dict)

    def add(self, calls: int, denials: int, tokens: TokenCounts | None,
            spend: Iterable[tuple[Unit, int]]) -> None:
        numbers = self.numbers
        numbers[0] += calls
        numbers[1] += denials
        if tokens is not None:
            for i, n in enumerate(tokens, 2):
                numbers[i] += n
        for unit, amount in spend:
            self.spend[unit] = self.spend.get(unit, 0) + amount

    def merge(self, other: Tally) -> None:
        """Add another day's counters of the same (scope, model)."""
        for i, n in enumerate(other.numbers):
            self.numbers[i] += n
        for unit, amount in other.spend.items():
            self.spend[unit] = self.spend.get(unit, 0) + amount

    def packed(self) -> str:
        """As the Redis store kept it before its integer fields (and still reads it):
        "calls,denials,<5 token counts>,UNIT=n,...", units in unit order."""
        units = sorted(self.spend, key=_UNIT_ORDER.__getitem__)
        return ",".join([*map(str, self.numbers), *(f"{u.value}={self.spend[u]}" for u in units)])

    @classmethod
    def unpacked(cls, text: str) -> Tally:
        numbers, spend = [], {}
        for item in text.split(","):
            unit, sep, amount = item.partition("=")
            if sep:
                spend[Unit(unit)] = int(amount)
            else:
                numbers.append(int(item))
        if len(numbers) != COUNTERS:
            raise ValueError(f"a usage counter holds {COUNTERS} numbers, not {len(numbers)}")
        return cls(numbers, spend)


class UsageEntry(NamedTuple):
    """One (scope, model) of one day, as a store answers it."""

    scope: str
    model: str
    tally: Tally


class UsagePage(NamedTuple):
    """A store's answer for whole days of a period: the period (resolved, when the call left
    it to the store), the day to ask for next (None: the period is done), and the entries."""

    period: str
    next_index: int | None
    entries: tuple[UsageEntry, ...]


PAGE_ENTRIES = 1_000
"""A page ends after the day that brings it to this many entries: each day is read whole (in
one atomic step), so a day is never half in one page and half in the next."""


# -- rows --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one tenant used under one scope, of one model, in one unit, in one period.

    `spend` is exact, in the unit's integer minor units (USD_MICROCENTS: 10^8 per dollar);
    `amount` is the same as a Decimal in the unit's major unit. `calls`, `denials` and the
    token counts belong to the (tenant, scope, model): each of its unit rows repeats them, so
    add them up over the rows of one unit. Token counts follow `TokenUsage`: input counts
    cache reads (`cached_tokens`) and cache writes, output counts reasoning; they are zero for
    calls committed without `usage=`."""

    tenant: str
    period: str
    scope: str
    model: str
    unit: Unit
    spend: int
    calls: int
    denials: int
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int

    @property
    def amount(self) -> Decimal:
        """`spend` in dollars (exactly, eight decimal places) for USD, else the count itself."""
        if self.unit is Unit.USD_MICROCENTS:
            return Decimal(self.spend).scaleb(-8)
        return Decimal(self.spend)

    def to_dict(self) -> dict[str, Any]:
        """The row as it goes on the wire: integers as integers, the amount as a decimal
        string (no float anywhere)."""
        return {"tenant": self.tenant, "period": self.period, "scope": self.scope,
                "model": self.model, "unit": self.unit.value, "spend": self.spend,
                "amount": format(self.amount, "f"), "calls": self.calls,
                "denials": self.denials, "input_tokens": self.input_tokens,
                "cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens,
                "output_tokens": self.output_tokens, "reasoning_tokens": self.reasoning_tokens}


def rows_of(tenant: str, period: str, totals: dict[tuple[str, str], Tally]) -> list[UsageRow]:
    """One tenant's rows from its period totals: by scope, then model, then unit order."""
    rows = []
    for (scope, model) in sorted(totals):
        tally = totals[(scope, model)]
        calls, denials, *tokens = tally.numbers
        for unit in sorted(tally.spend, key=_UNIT_ORDER.__getitem__):
            rows.append(UsageRow(tenant, period, scope, model, unit, tally.spend[unit], calls,
                                 denials, *tokens))
    return rows


def add_page(totals: dict[tuple[str, str], Tally], page: UsagePage) -> None:
    """Fold a page's entries into a tenant's period totals."""
    for entry in page.entries:
        key = (entry.scope, entry.model)
        found = totals.get(key)
        if found is None:
            totals[key] = found = Tally()
        found.merge(entry.tally)


# -- the wire ----------------------------------------------------------------------------------

def check_format(value: object) -> str:
    if value not in USAGE_FORMATS:
        raise InvalidRequest(f"format: {shown(value)} is not 'csv' or 'json' (JSON Lines: one "
                             "object per line)")
    return str(value)


def usage_header(format: str = "csv") -> str:
    """What an export starts with: the CSV header line; nothing for JSON Lines."""
    if check_format(format) == "json":
        return ""
    return _csv_line(COLUMNS)


def usage_line(row: UsageRow, format: str = "csv") -> str:
    """One row as one line of CSV or JSON Lines, newline included: for writing an export
    row by row (a server's streamed response)."""
    wire = row.to_dict()
    if check_format(format) == "json":
        return json.dumps(wire, separators=(",", ":"), ensure_ascii=False) + "\n"
    return _csv_line([wire[name] for name in COLUMNS])


def _csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def write_usage(rows: Iterable[UsageRow], stream: IO[str], format: str = "csv") -> int:
    """Write usage rows to a text stream as CSV (a header line, then one line per row) or
    JSON Lines (one object per line), row by row as they come; returns how many rows were
    written. Spend goes out as the exact integer (`spend`) and as a decimal string in the
    unit's major unit (`amount`); every count is an integer."""
    format = check_format(format)
    stream.write(usage_header(format))
    written = 0
    for row in rows:
        if not isinstance(row, UsageRow):
            raise InvalidRequest(f"rows: expected UsageRow values (from guard.usage()), got "
                                 f"{shown(row)}")
        stream.write(usage_line(row, format))
        written += 1
    return written


def read_usage(lines: Iterable[str], format: str = "csv") -> Iterator[UsageRow]:
    """Rows back from an export written by `write_usage` (exact: integers stay integers)."""
    format = check_format(format)
    records: Iterable[dict[str, Any]]
    if format == "json":
        records = (json.loads(line) for line in lines if line.strip())
    else:
        records = csv.DictReader(lines)
    for record in records:
        yield UsageRow(record["tenant"], record["period"], record["scope"], record["model"],
                       Unit(record["unit"]), int(record["spend"]), int(record["calls"]),
                       int(record["denials"]), int(record["input_tokens"]),
                       int(record["cached_tokens"]), int(record["cache_write_tokens"]),
                       int(record["output_tokens"]), int(record["reasoning_tokens"]))


__all__ = ["COLUMNS", "UsageRow", "read_usage", "usage_header", "usage_line", "write_usage"]
