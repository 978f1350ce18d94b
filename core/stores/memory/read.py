"""Reads, as read.lua: one reservation, balances, audit records, report counters. Like every
operation they first expire the tenant's overdue reservations; they write nothing else."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice, takewhile

from ...errors import InvalidRequest
from ...events import AuditRecord
from ...models import Balance, BudgetStatus, ReservationInfo, TenantStatus
from ...periods import Period, bucket
from ...reports import DAY_MS, ReportRow, report_days, report_rows
from ...scopes import parse_scope
from ...usage import Tally, UsageEntry, UsagePage, current_span, span
from ..operations import (
    Audit,
    Balances,
    Get,
    ListReservations,
    PlanOf,
    Report,
    StatusOf,
    Tenants,
    Usage,
)
from .state import AuditEntry, LedgerKey, Tenant, balance, dimension_ledgers, ledger_at, reservation


def get(t: Tenant, op: Get, now: int) -> ReservationInfo:
    """One reservation, active or finished within its retention."""
    return reservation(t, op.reservation_id).info()


_LOOKED_AT = 10_000
"""Entries of `t.listing` one page of `list_reservations` looks at, at most."""


def _number(entry: tuple[int, str]) -> int:
    return entry[0]


def list_reservations(t: Tenant, op: ListReservations, now: int
                      ) -> tuple[tuple[ReservationInfo, ...], str | None]:
    """The tenant's reservations in the order they were made, from after the cursor's one
    (the cursor is that reservation's number in `t.listing`). One page looks at no more
    than `_LOOKED_AT` of them: a short page with a cursor is an answer, so the store's lock
    is never held for a walk through a day of finished reservations."""
    after = 0
    if op.cursor is not None:
        if not op.cursor.isdigit():
            raise InvalidRequest("cursor: not a cursor of this store")
        after = int(op.cursor)
    listing, kept, retention = t.listing, t.reservations, t.cx.finished_retention_ms
    start = bisect_right(listing, after, key=_number)
    stop = min(len(listing), start + _LOOKED_AT)
    page: list[ReservationInfo] = []
    for at in range(start, stop):
        res = kept.get(listing[at][1])
        if (res is None or (op.status is not None and res.status is not op.status)
                or (res.finalized_at_ms is not None
                    and res.finalized_at_ms + retention < now)):
            continue
        if len(page) == op.limit:  # one more there: the page ends at the one before
            return tuple(page), str(listing[at - 1][0])
        page.append(res.info())
    return tuple(page), (str(listing[stop - 1][0]) if stop < len(listing) else None)


def balances(t: Tenant, op: Balances, now: int) -> tuple[Balance, ...]:
    """The current ledgers of a scope (one dimension value, if the scope names one), and
    with `include_children` those of the scopes below it."""
    path = parse_scope(op.scope)
    below = op.scope + "/" if op.include_children else None
    result: list[Balance] = []
    for scope in sorted(t.definitions):
        if scope != path.base and not (below and scope.startswith(below)):
            continue
        for d in t.definitions[scope].values():
            current = bucket(d.period, now)
            if d.per is None:
                keys: Iterator[LedgerKey] = iter(
                    () if path.dimension else ((scope, d.unit, d.period, current),))
            elif path.dimension or below:
                keys = iter(sorted(k for k in dimension_ledgers(t, d, current)
                                   if path.dimension is None or k[0] == path.path))
            else:
                continue
            result += [balance(k, ledger_at(t, k, d, now), d) for k in keys]
    return tuple(result)


def audit(t: Tenant, op: Audit, now: int) -> tuple[AuditRecord, ...]:
    """The newest `op.limit` audit records of the types asked for, oldest first (only
    those are built: a read of the newest few is cheap whatever the log holds)."""
    since, until, types = op.since_ms, op.until_ms, op.types
    newest: Iterable[AuditEntry] = reversed(t.audit)
    if since is not None:  # up to the first older one, as read.lua
        newest = takewhile(lambda r: r[1] >= since, newest)
    found = islice((r for r in newest if (until is None or r[1] <= until)
                    and (types is None or r[2] in types)), op.limit)
    return tuple(reversed([_audit_record(r) for r in found]))


def plan_of(t: Tenant, op: PlanOf, now: int) -> str | None:
    """The name of the plan the tenant is on."""
    return t.plan


def status_of(t: Tenant, op: StatusOf, now: int) -> TenantStatus:
    """Where the tenant stands (as read.lua's `status`): closed for good, suspended while
    every open budget is frozen, else active."""
    if t.closed_at_ms is not None:
        return TenantStatus.CLOSED
    open_ = [d.status for by_key in t.definitions.values() for d in by_key.values()
             if d.status is not BudgetStatus.CLOSED]
    frozen = bool(open_) and all(status is BudgetStatus.FROZEN for status in open_)
    return TenantStatus.SUSPENDED if frozen else TenantStatus.ACTIVE


def tenants(every: Iterable[Tenant], op: Tenants, now: int) -> tuple[str, ...]:
    """The tenants registered or with at least one change on record, by name (as the
    Redis store: a tenant whose every call was refused or only read holds nothing)."""
    return tuple(sorted(t.name for t in every if t.seq or t.profile is not None))


def report(t: Tenant, op: Report, now: int) -> tuple[ReportRow, ...]:
    """The rows of the period containing `op.at_ms` (or now), from the kept days of that
    period only (as the report read in read.lua)."""
    at = op.at_ms if op.at_ms is not None else now
    counts: dict[str, int] = {}
    for day in report_days(op.period, at, now, t.cx.report_retention_days):
        kept = t.report.get(day)
        if kept:
            label = bucket(Period.DAY, day * DAY_MS)
            counts.update((f"{label}|{key}", n) for key, n in kept.items())
    return report_rows(counts, op.period, at, op.by, op.top)


def usage(t: Tenant, op: Usage, now: int) -> UsagePage:
    """The period's usage counters, whole days from day `op.index` until `op.limit` entries
    (days past the retention hold none), as the usage read in read.lua."""
    found = span(op.period) if op.period is not None else current_span(now)
    oldest = now // DAY_MS - t.cx.report_retention_days + 1
    entries: list[UsageEntry] = []
    for day in range(found.first + op.index, found.last + 1):
        kept = t.usage.get(day) if day >= oldest else None
        if kept:
            entries += [UsageEntry(scope, model, Tally(list(kept[key].numbers),
                                                       dict(kept[key].spend)))
                        for key in sorted(kept) for scope, model in (key,)]
        if len(entries) >= op.limit and day < found.last:
            return UsagePage(found.label, day + 1 - found.first, tuple(entries))
    return UsagePage(found.label, None, tuple(entries))


def _audit_record(entry: AuditEntry) -> AuditRecord:
    """An audit record, built when read (the write path keeps a plain tuple)."""
    seq, at, kind, tenant, subject, action, fields = entry
    said = None if action is None else f"{action.kind} {action.name}"
    if isinstance(fields, dict):
        return AuditRecord(seq, at, kind, tenant, subject=subject, action=said, **fields)
    # the usual reserve and commit: the scopes, then the fields after the action
    return AuditRecord(seq, at, kind, tenant, fields[0], subject, said, *fields[1:])
