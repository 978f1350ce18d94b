"""The governance admin plane's reads, in the shapes of the Cycles governance admin spec: the
event stream (`GET /v1/admin/events`, `GET /v1/admin/events/{event_id}`, and a tenant's own
`GET /v1/events`), the audit log (`GET /v1/admin/audit/logs`) and the dashboard's overview
(`GET /v1/admin/overview`).

Every change and denial is on record in its tenant's audit log (both stores). These routes
read those records and show each in the spec's shape; they keep nothing of their own. An
event is a record whose kind has a Cycles event type (`event_type`): denials, expiries,
funding, freezes and closes, budget changes, tenants registered, suspended, reactivated
and closed, API keys made, revoked or given other permissions, and the notifications the
stores put on record with the step that made them (a threshold crossed, a budget
exhausted, over its limit or back under it, debt incurred, a commit over its estimate).
A page newest first (the default) reads each tenant's log back from its cursor only as far
as the page needs (`_newest`); any other order reads every record kept (up to the store's
audit retention): they serve an operator's dashboard, not a hot path."""

from __future__ import annotations

import asyncio
import heapq
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..clock import moment_ms
from ..events import AUDIT_TYPES, CYCLES_EVENT_TYPES, AuditRecord, AuditType
from ..guard import Guard
from ..models import Balance, BudgetStatus
from ..scopes import tenant_name
from . import paging
from .admin import require_admin, search_text
from .auth import tenant_key
from .context import json_response
from .errors import bad_request, not_found
from .queries import only, query_int
from .records import iso_ms
from .runtime import Settings
from .subscriptions import delivery_logs, failures

SOURCE = "allotment"
"""The `source` of every event: the server that read it from the store."""
WINDOW_S = 3_600
"""The overview's window for recent events, as the spec's reference."""
_READ_ALL = 100_000
"""Records read per tenant: more than any store keeps (its audit retention)."""
_TOGETHER = 32
"""Tenants' reads a newest-first page has in flight at once."""
_INLINE = 2_000
"""Records matched on the event loop; more go to a worker thread."""
_MOST = 100
"""The most events on a page (the spec's maximum)."""
_TENANT_CATEGORIES = ("budget", "reservation", "tenant")
"""What a tenant key may see of its own events (the spec's tenant-accessible types)."""
_SENTINELS = ("__admin__", "__unauth__")
"""The spec's tenant ids of admin and unauthenticated calls in the audit log."""

CATEGORIES = frozenset(kind.partition(".")[0] for kind in CYCLES_EVENT_TYPES)
_STATUS_EVENTS = {"FROZEN": "budget.frozen", "ACTIVE": "budget.unfrozen",
                  "CLOSED": "budget.closed"}
_FUND_EVENTS = {"CREDIT": "budget.funded", "DEBIT": "budget.debited", "RESET": "budget.reset",
                "RESET_SPENT": "budget.reset_spent", "REPAY_DEBT": "budget.debt_repaid"}
_SAME = {AuditType.DENIED: "reservation.denied", AuditType.EXPIRED: "reservation.expired",
         AuditType.BUDGET_UPDATED: "budget.updated",
         AuditType.TENANT_SUSPENDED: "tenant.suspended",
         AuditType.TENANT_REACTIVATED: "tenant.reactivated",
         AuditType.TENANT_CLOSED: "tenant.closed",
         AuditType.MODE_SET: "tenant.settings_changed",
         AuditType.TENANT_CREATED: "tenant.created",
         AuditType.KEY_CREATED: "api_key.created", AuditType.KEY_REVOKED: "api_key.revoked",
         AuditType.WEBHOOK_CREATED: "webhook.created",
         AuditType.WEBHOOK_DELETED: "webhook.deleted",
         **{kind: kind for kind in (AuditType.THRESHOLD_CROSSED, AuditType.EXHAUSTED,
                                    AuditType.OVER_LIMIT_ENTERED, AuditType.OVER_LIMIT_EXITED,
                                    AuditType.DEBT_INCURRED, AuditType.COMMIT_OVERAGE)}}
_RECORD_OF = {**{kind: record for record, kind in _SAME.items()},
              **dict.fromkeys(_STATUS_EVENTS.values(), AuditType.BUDGET_STATUS),
              **dict.fromkeys(_FUND_EVENTS.values(), AuditType.BUDGET_FUNDED),
              "budget.created": AuditType.BUDGET_SET,
              "api_key.permissions_changed": AuditType.KEY_UPDATED,
              **dict.fromkeys(("webhook.updated", "webhook.paused", "webhook.resumed"),
                              AuditType.WEBHOOK_UPDATED)}
"""The record kind each event type comes from."""
EVENT_RECORDS = frozenset(_RECORD_OF.values())
"""The record kinds an event comes from."""
EVENT_TYPES = frozenset(_RECORD_OF)
"""The Cycles event types these records give."""
_ID = re.compile(r"^([a-z0-9_.@-]{1,128}):([0-9]{1,15})$")
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
                      r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def event_type(r: AuditRecord) -> str | None:
    """The Cycles event type of a record, None when it has none. A budget set shows as
    budget.created (the record does not say whether the budget was there before; a removal
    has no event type)."""
    if r.type in _SAME:
        return _SAME[r.type]
    if r.type == AuditType.BUDGET_STATUS:
        return _STATUS_EVENTS.get(str(r.detail.get("status")))
    if r.type == AuditType.BUDGET_FUNDED:
        return _FUND_EVENTS.get(str(r.detail.get("operation")))
    if r.type == AuditType.BUDGET_SET:
        return None if r.detail.get("removed") else "budget.created"
    if r.type == AuditType.KEY_UPDATED:  # a key renamed only has no event type
        return "api_key.permissions_changed" if "permissions" in r.detail else None
    if r.type == AuditType.WEBHOOK_UPDATED:  # paused or resumed, and nothing else changed
        if set(r.detail) == {"webhook_id", "enabled"}:
            return "webhook.resumed" if r.detail["enabled"] else "webhook.paused"
        return "webhook.updated"
    return None


def _amounts(values: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"unit": a.unit.value, "amount": a.amount} for a in values]


def _action(text: str | None) -> dict[str, str] | None:
    """A record's action ("llm.completion openai:gpt-4o") as the wire's Action."""
    if not text:
        return None
    kind, _, name = text.partition(" ")
    return {"kind": kind, "name": name or kind}


def _what(r: AuditRecord) -> dict[str, Any]:
    """What a record says beyond its kind and time, without empty fields."""
    subject = None if r.subject is None else {
        level: value for level, value in r.subject.model_dump(exclude_none=True).items()
        if value != {}}
    found = {"reservation_id": r.reservation_id, "subject": subject,
             "action": _action(r.action), "estimate": _amounts(r.estimate),
             "actual": _amounts(r.actual), "charged": _amounts(r.charged),
             "reason": r.reason, "actor": r.actor,
             "scopes": list(r.scopes) if len(r.scopes) > 1 else None,
             "detail": {name: value for name, value in r.detail.items() if value is not None}}
    return {name: value for name, value in found.items() if value not in (None, [], {})}


def event_of(r: AuditRecord, kind: str) -> dict[str, Any]:
    """The spec's Event of a record with event type `kind`."""
    event = {"event_id": f"{r.tenant}:{r.seq}", "event_type": kind,
             "category": kind.partition(".")[0], "timestamp": iso_ms(r.at_ms),
             "tenant_id": r.tenant, "source": SOURCE, "data": _what(r)}
    if kind == "reservation.expired":  # the only cause a record is sure of: who called
        event["actor"] = {"type": "system"}  # the others is not on record
    if r.scopes:
        event["scope"] = r.scopes[-1]  # the deepest a charge reached
    return event


def _resource(r: AuditRecord) -> tuple[str, str]:
    family = r.type.partition(".")[0]
    if family == "reservation" and r.reservation_id:
        return "reservation", r.reservation_id
    if family in ("budget", "quota", "access", "event") and r.scopes:
        return ("policy" if family in ("quota", "access") else family), r.scopes[0]
    if family == "api_key" and "key_id" in r.detail:
        return "api_key", str(r.detail["key_id"])
    if family == "webhook" and "webhook_id" in r.detail:
        return "webhook", str(r.detail["webhook_id"])
    return "tenant", r.tenant


def log_entry(r: AuditRecord) -> dict[str, Any]:
    """The spec's AuditLogEntry of a record: its kind as the operation, 409 and the reason
    code for a denial, 200 for a change (or a shadow-mode denial, which let the call go)."""
    resource_type, resource_id = _resource(r)
    denied = r.type == AuditType.DENIED
    entry: dict[str, Any] = {
        "log_id": f"{r.tenant}:{r.seq}", "timestamp": iso_ms(r.at_ms), "tenant_id": r.tenant,
        "operation": r.type, "resource_type": resource_type, "resource_id": resource_id,
        "status": 409 if denied else 200}
    if denied and r.reason:
        entry["error_code"] = r.reason
    what = _what(r)
    for name in ("subject", "action"):
        if name in what:
            entry[name] = what.pop(name)
    amounts = r.estimate or r.actual
    if amounts:
        entry["amount"] = _amounts(amounts[:1])[0]
    if what:
        entry["metadata"] = what
    return entry


def _given(request: Request, *names: str) -> None:
    """Refuse a blank value of a parameter that has no blank meaning (an enum, a time, a
    number): leave it out instead."""
    for name in names:
        if request.query_params.get(name) == "":
            raise bad_request(f"{name}: blank; give a value or leave the parameter out")


def _moment(request: Request, name: str) -> int | None:
    """A `date-time` parameter (RFC 3339, with its zone), as epoch ms."""
    text = request.query_params.get(name)
    if text is None:
        return None
    at = moment_ms(text.upper()) if _RFC3339.match(text) else None
    if at is None or at < 0:
        raise bad_request(f"{name}: {text!r} is not an RFC 3339 time with its zone, from "
                          "1970 on (e.g. 2026-12-01T00:00:00Z)")
    return at


def _statuses(request: Request) -> tuple[int | None, int | None, int | None]:
    """`status`, or the range `status_min`..`status_max`: HTTP codes 100-599; both forms
    at once, or a minimum above the maximum, is 400."""
    found = [query_int(request, name) for name in ("status", "status_min", "status_max")]
    for name, value in zip(("status", "status_min", "status_max"), found, strict=True):
        if value is not None and not 100 <= value <= 599:
            raise bad_request(f"{name}: {value} is not an HTTP status (100-599)")
    status, low, high = found
    if status is not None and (low is not None or high is not None):
        raise bad_request("status: give it alone, or a range with status_min and status_max")
    if low is not None and high is not None and low > high:
        raise bad_request(f"status_min: {low} is above status_max {high}")
    return status, low, high


def _one_of(request: Request, name: str, known: Iterable[str],
            shown: str | None = None) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in known:
        raise bad_request(f"{name}: {value!r} is not "
                          + (shown or "one of " + ", ".join(sorted(known))))
    return value


async def _records(guard: Guard, tenants: Iterable[str], since: int | None,
                   types: Iterable[str] | None, until: int | None = None
                   ) -> list[AuditRecord]:
    """Every kept record of the tenants, of `types` (None: all), from `since` until
    `until`."""
    kinds = None if types is None else sorted(types)
    found: list[AuditRecord] = []
    for tenant in tenants:
        found += await guard.aaudit(tenant, since=since, until=until, types=kinds,
                                    limit=_READ_ALL)
        await asyncio.sleep(0)  # the embedded store answers at once: let others in between
    return found


async def _matched(records: Sequence[AuditRecord], match: Callable[[AuditRecord], Row | None]
                   ) -> list[Row]:
    """The rows `match` makes of `records`; many are matched in a worker thread, so a large
    log does not hold up the runtime routes."""
    def run() -> list[Row]:
        return [row for r in records if (row := match(r)) is not None]
    return run() if len(records) <= _INLINE else await run_in_threadpool(run)


async def _rows(guard: Guard, tenants: Iterable[str], since: int | None,
                until: int | None, types: Iterable[str] | None,
                match: Callable[[AuditRecord], Row | None], order: _Order) -> list[Row]:
    """The rows of the tenants' records of `types` (None: all) from `since` until `until`
    that `match` keeps. Newest first (the default order) the page is merged from the
    tenants' logs read back from the cursor's moment, each only as far as it may still
    reach the page (`_newest`); any other order reads every record kept."""
    if not (order.descending and order.head[1] == "timestamp"):
        return await _matched(await _records(guard, tenants, since, types, until), match)
    after = order.asked[1]
    kinds = None if types is None else sorted(types)
    if after is not None:  # the cursor's moment: [..., time, id]
        until = int(after[-2]) if until is None else min(until, int(after[-2]))
    return await _newest(guard, list(tenants), since, until, kinds, match, order)


async def _newest(guard: Guard, tenants: list[str], since: int | None, until: int | None,
                  kinds: list[str] | None, match: Callable[[AuditRecord], Row | None],
                  order: _Order) -> list[Row]:
    """A newest-first page's candidate rows. Each tenant's newest few records are read
    (twice its share of the page, at least 2); the page's last row so far bounds it, and a
    tenant is read further back (fourfold) only while its oldest record read is newer than
    that bound and it may have more: a record older than its oldest read cannot beat it (a
    tenant's records are in time order, and the store reads newest first). Up to
    `_TOGETHER` tenants are read at once, so a Redis store batches their calls."""
    size, after = order.asked
    share = max(2, -(-2 * (size + 1) // max(1, len(tenants))))
    limits = dict.fromkeys(tenants, share)
    rows: dict[str, list[Row]] = {}
    oldest: dict[str, list[str]] = {}  # the sort key of each tenant's oldest record read
    pending = list(tenants)

    async def read(tenant: str) -> None:
        records = await guard.aaudit(tenant, since=since, until=until, types=kinds,
                                     limit=limits[tenant])
        rows[tenant] = [row for row in await _matched(records, match)
                        if after is None or order.key(row) < after]
        if len(records) < limits[tenant] or limits[tenant] >= _READ_ALL:
            oldest.pop(tenant, None)  # all of it read
        else:
            oldest[tenant] = order.key(_row(records[0]))
        await asyncio.sleep(0)  # the embedded store answers at once: let others in

    while pending:
        for at in range(0, len(pending), _TOGETHER):  # in flight together: Redis batches
            await asyncio.gather(*(read(tenant) for tenant in pending[at:at + _TOGETHER]))
        best = heapq.nlargest(size + 1, (order.key(row) for found in rows.values()
                                         for row in found))
        bound = best[-1] if len(best) > size else None
        pending = [tenant for tenant, key in oldest.items() if bound is None or key > bound]
        for tenant in pending:
            limits[tenant] = min(limits[tenant] * 4, _READ_ALL)
    return [row for found in rows.values() for row in found]


Row = dict[str, Any]
"""A record as a list sorts and filters it (the few fields those read, and the record
under `_r`); its answer is built only if it lands on the page."""


@dataclass(frozen=True)
class _Order:
    """The sort and page a list asks for, checked before anything is read. A cursor names
    its list and sort, so one from another list or sort is refused, never misread."""

    head: list[str]
    field: Callable[[Row], str]
    descending: bool
    asked: tuple[int, list[str] | None]

    def key(self, row: Row) -> list[str]:
        return [*self.head, self.field(row), row["_at"], row["_id"]]


def _order(request: Request, name: str, keys: dict[str, Callable[[Row], str]],
           most: int) -> _Order:
    """`sort_by` among `keys` and `sort_dir` (newest first by default), `limit` and
    `cursor`; ties are broken by the time and the record's id, so rows never reorder."""
    head, size, after = paging.sorting(request.query_params, name, keys, "timestamp", most)
    return _Order(head, keys[head[1]], head[2] == "desc", (size, after))


def _row(r: AuditRecord, **fields: Any) -> Row:
    """A row with its hidden fields: time and id as strings that sort as numbers."""
    return {**fields, "tenant_id": r.tenant, "_at": f"{r.at_ms:015d}",
            "_id": f"{r.tenant}:{r.seq:015d}", "_r": r}


def _paged(rows: list[Row], order: _Order, build: Callable[[Row], dict[str, Any]],
           field: str) -> dict[str, Any]:
    page, more = paging.paged(rows, order.key, order.asked, descending=order.descending)
    return {field: [build(row) for row in page], **more}


def _listed(request: Request, name: str) -> set[str]:
    """A list filter: repeated, or comma-separated (the spec's form), at most 25 values."""
    values = {value.strip() for given in request.query_params.getlist(name)
              for value in given.split(",") if value.strip()}
    if len(values) > 25:
        raise bad_request(f"{name}: at most 25 values, got {len(values)}")
    return values


_EVENT_SORTS: dict[str, Callable[[Row], str]] = {
    "timestamp": lambda row: "", "event_type": lambda row: row["event_type"],
    "category": lambda row: row["category"], "scope": lambda row: row["scope"],
    "tenant_id": lambda row: row["tenant_id"]}
_LOG_SORTS: dict[str, Callable[[Row], str]] = {
    "timestamp": lambda row: "", "operation": lambda row: row["operation"],
    "resource_type": lambda row: row["resource_type"],
    "tenant_id": lambda row: row["tenant_id"], "key_id": lambda row: "",
    "status": lambda row: f"{row['status']:03d}"}
_EVENT_QUERY = ("event_type", "category", "scope", "correlation_id", "trace_id",
                "request_id", "from", "to", "search", "sort_by", "sort_dir", "cursor",
                "limit")
_LOGS_MOST = 1_000
"""The most entries of a page of the audit log (the spec sets none)."""


class Governance:
    """The event stream, the audit log and the overview over one guard. The records are
    read on the event loop (store calls per tenant, see `_rows`); matching many of them,
    sorting and building the page run in a worker thread, so a large log does not hold up
    the runtime routes."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/events", self.admin_events, methods=["GET"]),
            Route("/v1/admin/events/{event_id}", self.admin_event, methods=["GET"]),
            Route("/v1/events", self.tenant_events, methods=["GET"]),
            Route("/v1/admin/audit/logs", self.audit_logs, methods=["GET"]),
            Route("/v1/admin/overview", self.overview, methods=["GET"]),
        ]

    async def admin_events(self, request: Request) -> Response:
        """Every tenant's events (or `tenant_id`'s), filtered and paged."""
        require_admin(self.s, request)
        only(request, "tenant_id", *_EVENT_QUERY)
        _given(request, "tenant_id")
        named = request.query_params.get("tenant_id")
        tenants = ([tenant_name(named, "tenant_id")] if named is not None
                   else await self.s.guard.atenants())
        return await self._events(request, tenants, EVENT_TYPES)

    async def tenant_events(self, request: Request) -> Response:
        """The key's own tenant's events of the tenant-accessible categories."""
        caller = await tenant_key(self.s.guard, request, "events:read")
        only(request, *_EVENT_QUERY)
        allowed = {kind for kind in EVENT_TYPES if kind.startswith(_TENANT_CATEGORIES)}
        return await self._events(request, [caller.tenant.name], allowed)

    async def _events(self, request: Request, tenants: Iterable[str],
                      allowed: Iterable[str]) -> Response:
        query = request.query_params
        _given(request, "from", "to", "limit")
        kind = _one_of(request, "event_type", CYCLES_EVENT_TYPES,
                       "a Cycles event type (e.g. reservation.denied, budget.funded)")
        category = _one_of(request, "category", CATEGORIES)
        start, end = _moment(request, "from"), _moment(request, "to")
        scope, search = query.get("scope") or None, search_text(query)
        unmatched = any(query.get(name) for name in ("correlation_id", "trace_id",
                                                     "request_id"))  # events carry none
        order = _order(request, "events", _EVENT_SORTS, _MOST)
        kept = {found for found in allowed if (kind is None or found == kind) and (
            category is None or found.startswith(category + "."))}

        def match(r: AuditRecord) -> Row | None:
            found = event_type(r)
            where = r.scopes[-1] if r.scopes else ""
            if (found is None or found not in kept  # `to` is the read's `until`
                    or (scope is not None and not where.startswith(scope))
                    or (search is not None and search not in where.lower())):
                return None
            return _row(r, event_type=found, category=found.partition(".")[0], scope=where)

        giving = {_RECORD_OF[found] for found in kept}  # the record kinds that give them
        rows = [] if unmatched or not giving else await _rows(
            self.s.guard, tenants, start, end, giving, match, order)
        return json_response(request, await run_in_threadpool(
            _paged, rows, order, lambda row: event_of(row["_r"], row["event_type"]),
            "events"))

    async def admin_event(self, request: Request) -> Response:
        """One event by its id (`<tenant>:<sequence number>`)."""
        require_admin(self.s, request)
        only(request)
        event_id = request.path_params["event_id"]
        matched = _ID.match(event_id)
        if matched is None:
            raise not_found(f"no event {event_id!r} (an event id is <tenant>:<number>)")
        tenant, seq = matched.group(1), int(matched.group(2))
        for r in await _records(self.s.guard, [tenant], None, EVENT_RECORDS):
            if r.seq == seq and (found := event_type(r)) is not None:
                return json_response(request, event_of(r, found))
        raise not_found(f"no event {event_id!r} (never, or past the audit retention)")

    async def audit_logs(self, request: Request) -> Response:
        """Every tenant's audit entries (or `tenant_id`'s), filtered and paged, newest
        first unless sorted otherwise."""
        require_admin(self.s, request)
        only(request, "tenant_id", "key_id", "operation", "status", "resource_type",
             "resource_id", "error_code", "error_code_exclude", "status_min", "status_max",
             "from", "to", "search", "trace_id", "request_id", "sort_by", "sort_dir",
             "cursor", "limit")
        query = request.query_params
        _given(request, "tenant_id", "status", "status_min", "status_max", "from", "to",
               "limit")
        named = query.get("tenant_id")
        start, end = _moment(request, "from"), _moment(request, "to")
        status, low, high = _statuses(request)
        operations, resources = _listed(request, "operation"), _listed(request,
                                                                       "resource_type")
        codes, excluded = _listed(request, "error_code"), _listed(request,
                                                                  "error_code_exclude")
        resource_id, search = query.get("resource_id") or None, search_text(query)
        unmatched = any(query.get(name) for name in ("key_id", "trace_id", "request_id"))
        order = _order(request, "logs", _LOG_SORTS, _LOGS_MOST)
        if unmatched or named in _SENTINELS:  # admin calls are on record under their tenant
            tenants: list[str] = []
        else:
            tenants = ([tenant_name(named, "tenant_id")] if named is not None
                       else list(await self.s.guard.atenants()))
        kinds = None if not operations else operations & AUDIT_TYPES  # read only those

        def match(r: AuditRecord) -> Row | None:
            denied = r.type == AuditType.DENIED
            code = r.reason if denied else None
            resource_type, where = _resource(r)
            row_status = 409 if denied else 200
            if ((resources and resource_type not in resources)  # `to` is the read's `until`
                    or (resource_id is not None and where != resource_id)
                    or (status is not None and row_status != status)
                    or (low is not None and row_status < low)
                    or (high is not None and row_status > high)
                    or (codes and code not in codes) or (code in excluded)
                    or (search is not None and search not in " ".join(
                        [where, f"{r.tenant}:{r.seq}", code or "", r.type]).lower())):
                return None
            return _row(r, operation=r.type, resource_type=resource_type, status=row_status)

        rows = [] if kinds == set() else await _rows(self.s.guard, tenants, start, end,
                                                     kinds, match, order)
        return json_response(request, await run_in_threadpool(
            _paged, rows, order, lambda row: log_entry(row["_r"]), "logs"))

    async def overview(self, request: Request) -> Response:
        """Counts of tenants, budgets and webhooks, the budgets most over their limit and
        most in debt, failing webhooks, and the last hour's events (denials and expiries
        first), in one answer."""
        require_admin(self.s, request)
        only(request)
        guard, now = self.s.guard, int(time.time() * 1000)
        tenants = list(await guard.atenants())
        states: Counter[str] = Counter()
        balances: list[Balance] = []
        for name in tenants:  # its status and balances only: its record is not shown
            states[(await guard.atenant_status(name)).value] += 1
            balances += await guard.abalances(f"tenant:{name}")
        recent = []
        for r in await _records(guard, tenants, now - WINDOW_S * 1000, EVENT_RECORDS):
            if (found := event_type(r)) is not None:
                recent.append((r, found))
        recent.sort(key=lambda pair: (pair[0].at_ms, pair[0].tenant, pair[0].seq),
                    reverse=True)
        over = sorted((b for b in balances if b.is_over_limit),
                      key=lambda b: (b.remaining, b.scope))
        owing = sorted((b for b in balances if b.debt > 0), key=lambda b: (-b.debt, b.scope))
        hooks = await self._webhooks(tenants)
        return json_response(request, {
            "as_of": iso_ms(now), "event_window_seconds": WINDOW_S,
            "tenant_counts": {"total": len(tenants), "active": states["ACTIVE"],
                              "suspended": states["SUSPENDED"], "closed": states["CLOSED"]},
            "budget_counts": _budget_counts(balances),
            "over_limit_scopes": [
                {"scope": b.scope, "unit": b.unit.value, "allocated": b.allocated,
                 "remaining": b.remaining, "debt": b.debt} for b in over[:10]],
            "debt_scopes": [{"scope": b.scope, "unit": b.unit.value, "debt": b.debt,
                             "overdraft_limit": b.overdraft_limit} for b in owing[:10]],
            **hooks,
            "event_counts": {"total_recent": len(recent), "by_category": dict(Counter(
                kind.partition(".")[0] for _, kind in recent))},
            "recent_denials": [event_of(r, kind) for r, kind in recent
                               if kind == "reservation.denied"][:10],
            "recent_expiries": [event_of(r, kind) for r, kind in recent
                                if kind == "reservation.expired"][:10],
            "recent_denials_by_reason": dict(Counter(
                r.reason or "DENIED" for r, kind in recent if kind == "reservation.denied")),
        })

    async def _webhooks(self, tenants: list[str]) -> dict[str, Any]:
        """Webhook counts and the failing ones: a subscription is failing while its newest
        deliveries (across the tenants a global one serves) failed: how many in a row, and
        when the last did. Each tenant's delivery log is read once."""
        guard = self.s.guard
        hooks = list(await guard.awebhooks())
        for tenant in tenants:
            hooks += await guard.awebhooks(tenant)
        sent = await delivery_logs(guard, tenants)
        failing: list[dict[str, Any]] = []
        for hook in hooks:
            deliveries = sent[hook.id]
            streak = failures(deliveries)
            if streak:
                failing.append({"subscription_id": hook.id, "url": hook.url,
                                "consecutive_failures": streak,
                                "last_failure_at": iso_ms(deliveries[0].updated_at_ms)})
        failing.sort(key=lambda row: (-int(row["consecutive_failures"]),
                                      str(row["subscription_id"])))
        enabled = sum(hook.enabled for hook in hooks)
        return {"webhook_counts": {"total": len(hooks), "active": enabled,
                                   "disabled": len(hooks) - enabled,
                                   "with_failures": len(failing)},
                "failing_webhooks": failing[:10]}


def _budget_counts(balances: list[Balance]) -> dict[str, Any]:
    statuses = Counter(b.status for b in balances)
    return {"total": len(balances), "active": statuses[BudgetStatus.ACTIVE],
            "frozen": statuses[BudgetStatus.FROZEN], "closed": statuses[BudgetStatus.CLOSED],
            "over_limit": sum(b.is_over_limit for b in balances),
            "with_debt": sum(b.debt > 0 for b in balances),
            "by_unit": dict(Counter(b.unit.value for b in balances))}
