"""The reference admin plane's response objects (Tenant, ApiKey, BudgetLedger), built from
what the guard knows. Every field those schemas require is always present: where the guard
keeps no value, a fixed, documented stand-in is sent rather than a `null` or a missing key
(both fail a strict client):

- `expires_at` of a key without expiry is `NO_EXPIRY` (the last second of year 9999): it
  parses as a date-time everywhere and lies after any real expiry;
- `created_at` the guard cannot vouch for is `UNKNOWN_TIME` (the Unix epoch).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..events import AuditRecord, AuditType
from ..guard import Guard
from ..keys import PREFIX
from ..models import ApiKey, Balance, TenantInfo, TenantStatus
from ..periods import Period, bucket_end_ms, bucket_start_ms
from ..scopes import parse_scope

NO_EXPIRY = "9999-12-31T23:59:59Z"
UNKNOWN_TIME = "1970-01-01T00:00:00Z"
_AUDIT_READ = 100_000
"""Audit records read to date budget definitions (a store keeps 10,000 a tenant unless
configured otherwise)."""

BudgetKey = tuple[str, str, str | None, str | None]
"""scope, unit, period name, dimension key (of a template): one budget definition."""
_UNKNOWN = -1
_ANY = "*"


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def tenant_view(info: TenantInfo | None, name: str,
                status: TenantStatus = TenantStatus.ACTIVE) -> dict[str, Any]:
    """A Tenant (with `closed_at` once closed). One the library made without a record (no
    `POST /v1/admin/tenants`) has no display name and no registration time: its id and
    `UNKNOWN_TIME` stand in."""
    if info is None:
        return {"tenant_id": name, "name": name, "status": status.value,
                "created_at": UNKNOWN_TIME}
    view = {"tenant_id": info.tenant, "name": info.name, "status": status.value,
            "created_at": iso(info.created_at_ms)}
    if info.closed_at_ms is not None:
        view["closed_at"] = iso(info.closed_at_ms)
    return view


def key_prefix(key_id: str) -> str:
    """The public head of a key's secret (`alk_<key id>`, everything before its random
    part): names the key uniquely and reveals nothing of the secret."""
    return f"{PREFIX}{key_id}"


def key_status(key: ApiKey, now_ms: int) -> str:
    if key.revoked:
        return "REVOKED"
    if key.expires_at_ms is not None and now_ms >= key.expires_at_ms:
        return "EXPIRED"
    return "ACTIVE"


def key_view(key: ApiKey, now_ms: int) -> dict[str, Any]:
    """An ApiKey (the list and revoke answers; create adds the secret)."""
    return {"key_id": key.key_id, "tenant_id": key.tenant, "key_prefix": key_prefix(key.key_id),
            "name": key.name, "permissions": list(key.permissions),
            "status": key_status(key, now_ms), "created_at": iso(key.created_at_ms),
            "expires_at": iso(key.expires_at_ms) or NO_EXPIRY}


_LABELS = {Period.MINUTE: "%Y-%m-%dT%H:%M", Period.HOUR: "%Y-%m-%dT%H",
           Period.DAY: "%Y-%m-%d", Period.MONTH: "%Y-%m", Period.YEAR: "%Y"}
"""How `periods.bucket` spells a bucket (weeks: `2026-W48`, ISO)."""


def _period_bounds(row: Balance) -> dict[str, str]:
    """period_start and period_end of a periodic ledger's bucket (e.g. `2026-11`)."""
    if not row.period or not row.bucket:
        return {}
    period = Period(row.period)
    if period is Period.WEEK:
        year, week = row.bucket.split("-W")
        inside = datetime.fromisocalendar(int(year), int(week), 1)
    else:
        inside = datetime.strptime(row.bucket, _LABELS[period])
    at = int(inside.replace(tzinfo=timezone.utc).timestamp()) * 1000
    return {"period_start": iso(bucket_start_ms(period, at)) or UNKNOWN_TIME,
            "period_end": iso(bucket_end_ms(period, at)) or UNKNOWN_TIME}


def ledger(row: Balance, tenant: str, created_at_ms: int | None = None) -> dict[str, Any]:
    """A BudgetLedger. `created_at_ms` is when the budget was defined, when known."""
    unit = row.unit.value
    amounts = {name: {"unit": unit, "amount": value} for name, value in (
        ("allocated", row.allocated), ("remaining", row.remaining),
        ("reserved", row.reserved), ("spent", row.spent), ("debt", row.debt),
        ("overdraft_limit", row.overdraft_limit))}
    return {
        "ledger_id": ledger_id(row),
        "tenant_id": tenant, "scope": row.scope, "unit": unit, **amounts,
        "is_over_limit": row.is_over_limit, "status": row.status.value,
        **_period_bounds(row), "created_at": iso(created_at_ms) or UNKNOWN_TIME}


def ledger_id(row: Balance) -> str:
    """A ledger's id: its scope, unit and period (the budget list's and bulk action's)."""
    return f"{row.scope}|{row.unit.value}" + (f"|{row.period}" if row.period else "")


def budget_key(row: Balance) -> BudgetKey:
    """The definition a ledger row belongs to (a dimension ledger: its template's)."""
    path = parse_scope(row.scope)
    per = path.dimension[0] if path.dimension is not None else None
    return (path.base, row.unit.value, row.period, per)


def _defined(records: tuple[AuditRecord, ...]) -> dict[BudgetKey, int]:
    """When each budget got its current definition: its first `budget.set` record. Only
    when the log is whole (its oldest record is the tenant's first, seq 1): once older
    records are dropped, the first one kept may be a later change. A removal record names
    no period or dimension, so the budgets of that scope and unit are unknown after one."""
    if not records or records[0].seq != 1:
        return {}
    found: dict[BudgetKey, int] = {}
    for record in records:
        if record.type != AuditType.BUDGET_SET or not record.scopes:
            continue
        detail = record.detail
        scope, unit = record.scopes[0], str(detail.get("unit"))
        if detail.get("removed"):
            for key in [k for k in found if k[:2] == (scope, unit)]:
                found[key] = _UNKNOWN
            found[(scope, unit, _ANY, None)] = _UNKNOWN
            continue
        key = (scope, unit, detail.get("period") or None, detail.get("per") or None)
        if found.get((scope, unit, _ANY, None)) == _UNKNOWN:
            found.setdefault(key, _UNKNOWN)
        found.setdefault(key, record.at_ms)
    return {key: at for key, at in found.items() if at != _UNKNOWN}


async def defined_at(guard: Guard, tenant: str) -> dict[BudgetKey, int]:
    """The definition times of a tenant's budgets that its audit log still proves."""
    return _defined(await guard.aaudit(tenant, limit=_AUDIT_READ))
