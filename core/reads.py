"""Reads of one tenant's state: balances, the audit log and the report.

Pure builders (they check arguments and return the operation); `ReadCalls` gives the guard a
method and an async twin for each. A tenant handle reads only its own tenant, with the tenant
filled in (see `tenant.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .arguments import enum
from .calls import Item, Runner, Stream, stream_twins, twins
from .errors import InvalidRequest
from .events import AUDIT_TYPES, check_type
from .models import ReservationStatus
from .periods import Period, parse_period
from .reports import check_by, check_top
from .scopes import parse_scope, tenant_name
from .stores import operations as ops
from .usage import PAGE_ENTRIES, Tally, UsagePage, add_page, check_period, rows_of
from .validation import MAX_LIST, check_int, check_list, shown

_REPORT_PERIODS = (Period.DAY, Period.WEEK, Period.MONTH, Period.YEAR)


def balances_op(scope: str, *, include_children: bool = True) -> ops.Balances:
    """Current balances of the budgets at `scope` and (by default) below it, dimension
    ledgers included. Reads one tenant's state only, never the keyspace."""
    path = parse_scope(scope)
    if not isinstance(include_children, bool):
        raise InvalidRequest(f"include_children: expected True or False, got "
                             f"{include_children!r}")
    return ops.Balances(tenant=path.tenant, scope=path.path, include_children=include_children)


def audit_op(tenant: str, *, since: int | datetime | None = None, types: Any = None,
             limit: int = 100, until: int | datetime | None = None) -> ops.Audit:
    """The tenant's audit records, newest last: the newest `limit` from `since` until
    `until` (both included; epoch ms or aware datetimes), of `types` (e.g.
    ["reservation.denied"]; the values of `AuditType`)."""
    since, until = _moment(since, "since"), _moment(until, "until")
    if isinstance(types, (str, set, frozenset)):
        types = [types] if isinstance(types, str) else list(types)
    kinds = None if types is None else frozenset(check_list(
        types, "types", MAX_LIST, lambda kind, field: check_type(kind, field, AUDIT_TYPES),
        '["reservation.denied"]'))
    return ops.Audit(tenant=tenant_name(tenant), since_ms=since, types=kinds,
                     limit=check_int(limit, "limit", 1, 100_000), until_ms=until)


def _moment(value: int | datetime | None, field: str) -> int | None:
    """A time as epoch ms: an aware datetime or an integer."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidRequest(f"{field}: give an aware datetime (with tzinfo) or epoch ms")
        return int(value.timestamp() * 1000)
    return None if value is None else check_int(value, field)


def report_op(tenant: str, *, period: Period | str = "month",
              at: int | datetime | None = None, by: str | None = None,
              top: int | None = None) -> ops.Report:
    """Per scope, for the period containing `at` (default now): reservations, commits,
    releases, expiries, denials by reason, reserved vs committed, exhaustions. With `by` (a
    dimension key such as "user" or "run") one row per value of it instead, busiest first;
    `top` keeps the busiest N rows (see `reports.py` for what each counter means)."""
    window = parse_period(period)
    if window is None or window not in _REPORT_PERIODS:
        raise InvalidRequest(f"period: {shown(period)}: a report covers one day, week, month "
                             "or year (counters are kept per day)")
    if isinstance(at, datetime):
        at = int(at.timestamp() * 1000)
    elif at is not None:
        at = check_int(at, "at")
    return ops.Report(tenant=tenant_name(tenant), period=window, at_ms=at, by=check_by(by),
                      top=check_top(top))


def list_reservations_op(tenant: str, *, status: ReservationStatus | str | None = None,
                         limit: int = 50, cursor: str | None = None
                         ) -> ops.ListReservations:
    """A page of the tenant's reservations (active, and finished within their retention)
    and the cursor of the next page, None when there is none. Pages come in no promised
    order and may be short, even empty, with a cursor: read on until it is None."""
    if status is not None:
        status = ReservationStatus(enum(ReservationStatus, status, "status"))
    if cursor is not None and not (isinstance(cursor, str) and 0 < len(cursor) <= 512):
        raise InvalidRequest("cursor: give back a cursor this call returned")
    return ops.ListReservations(tenant=tenant_name(tenant), status=status,
                                limit=check_int(limit, "limit", 1, 1_000), cursor=cursor)


def plan_of_op(tenant: str) -> ops.PlanOf:
    """The name of the plan `tenant` is on (`assign_plan`, or the guard's default plan once
    installed), None when it has none; read from the tenant's state, not from the audit
    log, so it does not depend on how long records are kept."""
    return ops.PlanOf(tenant=tenant_name(tenant))


def tenant_status_op(tenant: str) -> ops.StatusOf:
    """Where `tenant` stands: CLOSED for good, SUSPENDED while it has open budgets and every
    one is frozen (templates count before any run made a ledger of them), else ACTIVE; read
    in one store step from its record and its budgets' definitions."""
    return ops.StatusOf(tenant=tenant_name(tenant))


def usage_stream(period: str | None, tenants: tuple[str, ...] | None) -> Stream:
    """Usage rows of `tenants` (None: every tenant of the store, by name), one tenant at a
    time: its counters are read a page of whole days at a time and added up, then its rows
    go out, so what is held at once is one tenant's rows. The period a first read resolves
    (None: the store's current month) holds for every tenant after it."""
    names: tuple[str, ...] = tenants if tenants is not None else (
        yield ops.Tenants(tenant=""))
    for name in names:
        totals: dict[tuple[str, str], Tally] = {}
        index: int | None = 0
        while index is not None:
            page: UsagePage = yield ops.Usage(tenant=name, period=period, index=index,
                                                  limit=PAGE_ENTRIES)
            period, index = page.period, page.next_index
            add_page(totals, page)
        if period is not None:
            for row in rows_of(name, period, totals):
                yield Item(row)


class ReadCalls(Runner):
    """Balances, audit and report of any tenant (the unrestricted guard's reads)."""

    plan_of, aplan_of = twins(plan_of_op)
    tenant_status, atenant_status = twins(tenant_status_op)

    balances, abalances = twins(balances_op)
    audit, aaudit = twins(audit_op)
    report, areport = twins(report_op)
    list_reservations, alist_reservations = twins(list_reservations_op)

    def _usage(self, period: str | None = None, tenant: str | None = None) -> Stream:
        """Usage for invoicing: one `UsageRow` per tenant, scope, model and unit of `period`
        ("2026-11", or a day "2026-11-28"; UTC; default the current month), with spend (exact
        integers of the unit), calls, denials and the provider's token counts; of one
        `tenant`, or of every tenant by name. Rows come as they are read, tenant by tenant
        (`async for` over `ausage`); reading twice gives the same rows, and a period's spend
        adds up to what its ledgers were charged. See `allotment.usage`."""
        return usage_stream(check_period(period),
                            None if tenant is None else (tenant_name(tenant),))

    usage, ausage = stream_twins(_usage)

