"""The governance admin plane's reads, in the shapes of the Cycles governance admin spec: the
event stream (`GET /v1/admin/events`, `GET /v1/admin/events/{event_id}`, and a tenant's own
`GET /v1/events`), the audit log (`GET /v1/admin/audit/logs`) and the dashboard's overview
(`GET /v1/admin/overview`).

Every change and denial is on record in its tenant's audit log (both stores). These routes
read those records and show each in the spec's shape; they keep nothing of their own. An
event is a record whose kind has a Cycles event type (`event_type`): denials, expiries,
commits over their estimate, funding, freezes and closes, budget changes, suspensions and
closes of tenants. Notifications that leave no record (a threshold crossed, a budget
exhausted) go out as webhooks only and are not listed. A read looks at every tenant's kept
records (up to the store's audit retention): it serves an operator's dashboard, not a hot
path."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..clock import moment_ms
from ..events import AuditRecord, AuditType
from ..guard import Guard
from ..models import Balance, BudgetStatus
from ..scopes import tenant_name
from ..stores.hooks import FAILED
from . import paging
from .admin import require_admin, search_text
from .auth import tenant_key
from .context import json_response
from .errors import bad_request, not_found
from .queries import only, query_int
from .records import iso_ms
from .runtime import Settings
from .tenancy import tenant_rows

SOURCE = "allotment"
"""The `source` of every event: the server that read it from the store."""
WINDOW_S = 3_600
"""The overview's window for recent events, as the spec's reference."""
_READ_ALL = 100_000
"""Records read per tenant: more than any store keeps (its audit retention)."""
_MOST = 100
"""The most rows of a page of events or audit entries (the spec's maximum)."""
_TENANT_CATEGORIES = ("budget", "reservation", "tenant")
"""What a tenant key may see of its own events (the spec's tenant-accessible types)."""

CYCLES_EVENT_TYPES = frozenset(f"{category}.{name}" for category, names in {
    "budget": "created updated funded debited reset reset_spent debt_repaid frozen unfrozen "
              "closed closed_via_tenant_cascade threshold_crossed exhausted "
              "over_limit_entered over_limit_exited debt_incurred burn_rate_anomaly",
    "reservation": "denied denial_rate_spike expired expiry_rate_spike commit_overage "
                   "released_via_tenant_cascade",
    "tenant": "created updated suspended reactivated closed settings_changed",
    "webhook": "created updated paused resumed disabled deleted disabled_via_tenant_cascade",
    "api_key": "created revoked revoked_via_tenant_cascade expired permissions_changed "
               "auth_failed auth_failure_rate_spike",
    "policy": "created updated deleted",
    "system": "store_connection_lost store_connection_restored high_latency "
              "webhook_delivery_failed webhook_test"}.items() for name in names.split())
"""The governance spec's event types (v0.1.25): a filter may name any of them (one this
server never produces matches nothing); another is 400."""
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
         AuditType.MODE_SET: "tenant.settings_changed"}
EVENT_RECORDS = frozenset({*_SAME, AuditType.BUDGET_STATUS, AuditType.BUDGET_FUNDED,
                           AuditType.BUDGET_SET, AuditType.COMMITTED})
"""The record kinds an event may come from (a commit only when it went over)."""
EVENT_TYPES = frozenset({*_SAME.values(), *_STATUS_EVENTS.values(), *_FUND_EVENTS.values(),
                         "budget.created", "reservation.commit_overage"})
"""The Cycles event types these records give."""
_ID = re.compile(r"^([a-z0-9_.@-]{1,128}):([0-9]{1,15})$")
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
                      r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def event_type(r: AuditRecord) -> str | None:
    """The Cycles event type of a record, None when it has none. A budget set shows as
    budget.created (the record does not say whether the budget was there before; a removal
    has no event type), a commit only when it charged more than its estimate in a unit."""
    if r.type in _SAME:
        return _SAME[r.type]
    if r.type == AuditType.BUDGET_STATUS:
        return _STATUS_EVENTS.get(str(r.detail.get("status")))
    if r.type == AuditType.BUDGET_FUNDED:
        return _FUND_EVENTS.get(str(r.detail.get("operation")))
    if r.type == AuditType.BUDGET_SET:
        return None if r.detail.get("removed") else "budget.created"
    if r.type == AuditType.COMMITTED and _over(r):
        return "reservation.commit_overage"
    return None


def _over(r: AuditRecord) -> bool:
    estimated = {a.unit: a.amount for a in r.estimate}
    return any(a.amount > estimated.get(a.unit, 0) for a in r.actual)


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
             "detail": {name: value for name, value in r.detail.items() if value is not None}}
    return {name: value for name, value in found.items() if value not in (None, [], {})}


def event_of(r: AuditRecord, kind: str) -> dict[str, Any]:
    """The spec's Event of a record with event type `kind`."""
    actor = ("system" if kind == "reservation.expired" else
             "api_key" if kind.startswith("reservation.") else "admin")
    event = {"event_id": f"{r.tenant}:{r.seq}", "event_type": kind,
             "category": kind.partition(".")[0], "timestamp": iso_ms(r.at_ms),
             "tenant_id": r.tenant, "source": SOURCE, "actor": {"type": actor},
             "data": _what(r)}
    if r.scopes:
        event["scope"] = r.scopes[-1]  # the deepest a charge reached
    return event


def _resource(r: AuditRecord) -> tuple[str, str]:
    family = r.type.partition(".")[0]
    if family == "reservation" and r.reservation_id:
        return "reservation", r.reservation_id
    if family in ("budget", "quota", "access", "event") and r.scopes:
        return ("policy" if family in ("quota", "access") else family), r.scopes[0]
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
    if at is None:
        raise bad_request(f"{name}: {text!r} is not an RFC 3339 time with its zone (e.g. "
                          "2026-12-01T00:00:00Z)")
    return at


def _one_of(request: Request, name: str, known: Iterable[str],
            shown: str | None = None) -> str | None:
    value = request.query_params.get(name)
    if value is not None and value not in known:
        raise bad_request(f"{name}: {value!r} is not "
                          + (shown or "one of " + ", ".join(sorted(known))))
    return value


async def _records(guard: Guard, tenants: Iterable[str], since: int | None,
                   types: Iterable[str] | None) -> list[AuditRecord]:
    kinds = None if types is None else sorted(types)
    found: list[AuditRecord] = []
    for tenant in tenants:
        found += await guard.aaudit(tenant, since=since, types=kinds, limit=_READ_ALL)
    return found


def _sort(request: Request, keys: dict[str, Callable[[dict[str, Any]], str]]
          ) -> tuple[Callable[[dict[str, Any]], list[str]], bool]:
    """The sort a list asks for (`sort_by` among `keys`, `sort_dir`; newest first by
    default), as a key of strings that ends in the row's id, so ties never reorder."""
    by = _one_of(request, "sort_by", keys) or "timestamp"
    direction = _one_of(request, "sort_dir", ("asc", "desc")) or "desc"
    field = keys[by]
    return (lambda row: [field(row), row["_at"], row["_id"]]), direction == "desc"


def _page(request: Request, rows: list[dict[str, Any]],
          keys: dict[str, Callable[[dict[str, Any]], str]], field: str
          ) -> dict[str, Any]:
    key, descending = _sort(request, keys)
    page, more = paging.paged(rows, key, paging.window(request.query_params, _MOST),
                              descending=descending)
    return {field: [{k: v for k, v in row.items() if not k.startswith("_")} for row in page],
            **more}


def _keyed(row: dict[str, Any], at_ms: int, tenant: str, seq: int) -> dict[str, Any]:
    """A row with its hidden sort fields: the time and id as strings that sort as numbers."""
    return {**row, "_at": f"{at_ms:015d}", "_id": f"{tenant}:{seq:015d}"}


_EVENT_SORTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "timestamp": lambda row: "", "event_type": lambda row: row["event_type"],
    "category": lambda row: row["category"], "scope": lambda row: row.get("scope", ""),
    "tenant_id": lambda row: row["tenant_id"]}
_LOG_SORTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "timestamp": lambda row: "", "operation": lambda row: row["operation"],
    "resource_type": lambda row: row["resource_type"],
    "tenant_id": lambda row: row["tenant_id"], "key_id": lambda row: "",
    "status": lambda row: f"{row['status']:03d}"}
_EVENT_QUERY = ("event_type", "category", "scope", "correlation_id", "trace_id",
                "request_id", "from", "to", "search", "sort_by", "sort_dir", "cursor",
                "limit")


class Governance:
    """The event stream, the audit log and the overview over one guard."""

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
        _given(request, "tenant_id", "from", "to", "limit")
        kind = _one_of(request, "event_type", CYCLES_EVENT_TYPES,
                       "a Cycles event type (e.g. reservation.denied, budget.funded)")
        category = _one_of(request, "category", CATEGORIES)
        start, end = _moment(request, "from"), _moment(request, "to")
        scope, search = query.get("scope") or None, search_text(query)
        unmatched = any(query.get(name) for name in ("correlation_id", "trace_id",
                                                     "request_id"))  # events carry none
        paging.window(query, _MOST)  # a bad limit or cursor: 400 before anything is read
        rows = []
        for r in await _records(self.s.guard, tenants, start, EVENT_RECORDS):
            found = event_type(r)
            if (found is None or found not in allowed or unmatched
                    or (kind is not None and found != kind)
                    or (category is not None and not found.startswith(category + "."))
                    or (end is not None and r.at_ms > end)):
                continue
            event = event_of(r, found)
            where = event.get("scope", "")
            if scope is not None and not where.startswith(scope):
                continue
            if search is not None and search not in where.lower():
                continue
            rows.append(_keyed(event, r.at_ms, r.tenant, r.seq))
        return json_response(request, _page(request, rows, _EVENT_SORTS, "events"))

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
        status, low, high = (query_int(request, name)
                             for name in ("status", "status_min", "status_max"))
        operations, resources = set(query.getlist("operation")), set(
            query.getlist("resource_type"))
        codes, excluded = set(query.getlist("error_code")), set(
            query.getlist("error_code_exclude"))
        resource_id, search = query.get("resource_id") or None, search_text(query)
        unmatched = any(query.get(name) for name in ("key_id", "trace_id", "request_id"))
        paging.window(query, _MOST)
        if named is not None and named.startswith("__"):  # `__admin__`, `__unauth__`: none
            tenants: list[str] = []
        else:
            tenants = ([tenant_name(named, "tenant_id")] if named is not None
                       else list(await self.s.guard.atenants()))
        rows = []
        for r in await _records(self.s.guard, tenants, start, None):
            entry = log_entry(r)
            code = entry.get("error_code")
            if (unmatched or (end is not None and r.at_ms > end)
                    or (operations and entry["operation"] not in operations)
                    or (resources and entry["resource_type"] not in resources)
                    or (resource_id is not None and entry["resource_id"] != resource_id)
                    or (status is not None and entry["status"] != status)
                    or (low is not None and entry["status"] < low)
                    or (high is not None and entry["status"] > high)
                    or (codes and code not in codes) or (code is not None and code in excluded)
                    or (search is not None and search not in " ".join(
                        [entry["resource_id"], entry["log_id"], code or "",
                         entry["operation"]]).lower())):
                continue
            rows.append(_keyed(entry, r.at_ms, r.tenant, r.seq))
        return json_response(request, _page(request, rows, _LOG_SORTS, "logs"))

    async def overview(self, request: Request) -> Response:
        """Counts of tenants, budgets and webhooks, the budgets most over their limit and
        most in debt, failing webhooks, and the last hour's events (denials and expiries
        first), in one answer."""
        require_admin(self.s, request)
        only(request)
        guard, now = self.s.guard, int(time.time() * 1000)
        tenants = await tenant_rows(guard, None)
        balances: list[Balance] = []
        for name, _, _ in tenants:
            balances += await guard.abalances(f"tenant:{name}")
        recent = []
        for r in await _records(guard, [name for name, _, _ in tenants],
                                now - WINDOW_S * 1000, EVENT_RECORDS):
            if (found := event_type(r)) is not None:
                recent.append((r, found))
        recent.sort(key=lambda pair: (pair[0].at_ms, pair[0].tenant, pair[0].seq),
                    reverse=True)
        states = Counter(state.value for _, _, state in tenants)
        over = sorted((b for b in balances if b.is_over_limit),
                      key=lambda b: (b.remaining, b.scope))
        owing = sorted((b for b in balances if b.debt > 0), key=lambda b: (-b.debt, b.scope))
        hooks = await self._webhooks([name for name, _, _ in tenants])
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
        deliveries failed (how many in a row, and when the last did)."""
        guard = self.s.guard
        hooks = list(await guard.awebhooks())
        for tenant in tenants:
            hooks += await guard.awebhooks(tenant)
        failing: list[dict[str, Any]] = []
        for hook in hooks:
            deliveries = sorted(await guard.awebhook_deliveries(webhook_id=hook.id),
                                key=lambda d: d.updated_at_ms, reverse=True)
            streak = 0
            for delivery in deliveries:
                if delivery.status != FAILED:
                    break
                streak += 1
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
