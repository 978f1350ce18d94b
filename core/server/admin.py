"""The reference admin plane's provisioning calls, with their shapes: API keys (admin key),
budgets (admin key with `tenant_id`, or a tenant key with budgets:write inside its own
tenant), lookup and list, fund with its five operations, freeze and unfreeze. Each maps onto
one guard call; a tenant key's calls run through its tenant handle."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..guard import Guard
from ..keys import PERMISSIONS, RUNTIME
from ..models import ApiKey, Balance, BudgetStatus, TenantInfo
from ..scopes import parse_scope, tenant_name
from ..tenant import TenantGuard
from . import wire
from .auth import admin_key, tenant_key
from .context import body, json_response
from .errors import ApiError, bad_request, forbidden, not_found, unauthorized
from .runtime import Settings

FundName = Literal["CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT"]


class TenantBody(wire._Strict):
    tenant_id: str = Field(min_length=3, max_length=64, pattern=r"^[a-z0-9-]+$")
    name: str = Field(min_length=1, max_length=256)
    parent_tenant_id: str | None = None
    metadata: wire.Metadata | None = None
    default_commit_overage_policy: wire.PolicyName | None = None
    default_reservation_ttl_ms: int | None = None
    max_reservation_ttl_ms: int | None = None
    max_reservation_extensions: int | None = None
    reservation_expiry_policy: str | None = None
    """Accepted for the reference shape; the guard's own settings apply (see README)."""


class KeyBody(wire._Strict):
    tenant_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    permissions: list[str] | None = Field(None, max_length=len(PERMISSIONS))
    description: str | None = Field(None, max_length=1024)
    scope_filter: list[str] | None = None
    expires_at: str | None = None
    metadata: wire.Metadata | None = None


class BudgetBody(wire._Strict):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    scope: str = Field(min_length=1, max_length=2048)
    unit: wire.UnitName
    allocated: wire.WireAmount
    overdraft_limit: wire.WireAmount | None = None
    commit_overage_policy: wire.PolicyName | None = None
    rollover_policy: str | None = None
    period_start: str | None = None
    period_end: str | None = None
    metadata: wire.Metadata | None = None


class FundBody(wire._Strict):
    operation: FundName
    amount: int | wire.WireAmount
    spent: int | None = Field(None, ge=0)
    reason: str | None = Field(None, max_length=1024)
    idempotency_key: wire.IdempotencyKey | None = None


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def _epoch_ms(text: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{field}: {text!r} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        raise bad_request(f"{field}: give a time zone (e.g. 2027-01-01T00:00:00Z)")
    return int(moment.timestamp() * 1000)


def tenant_view(info: TenantInfo, status: str = "ACTIVE") -> dict[str, Any]:
    return {"tenant_id": info.tenant, "name": info.name, "status": status,
            "created_at": iso(info.created_at_ms)}


async def tenant_status(guard: Guard, tenant: str) -> str:
    """SUSPENDED when the tenant has budgets and every one is frozen (suspending a tenant
    freezes its budgets: the guard keeps no tenant status of its own), else ACTIVE. Read
    from the budgets at the tenant's root when it has some (one small read however many
    run or user ledgers lie below), else from all of them."""
    root = f"tenant:{tenant}"
    rows = await guard.abalances(root, include_children=False)
    if not rows:
        rows = await guard.abalances(root)
    frozen = bool(rows) and all(row.status is BudgetStatus.FROZEN for row in rows)
    return "SUSPENDED" if frozen else "ACTIVE"


def key_view(key: ApiKey) -> dict[str, Any]:
    view: dict[str, Any] = {
        "key_id": key.key_id, "tenant_id": key.tenant, "name": key.name,
        "permissions": list(key.permissions), "created_at": iso(key.created_at_ms),
        "status": "REVOKED" if key.revoked else "ACTIVE"}
    if key.expires_at_ms is not None:
        view["expires_at"] = iso(key.expires_at_ms)
    return view


def ledger(row: Balance, tenant: str) -> dict[str, Any]:
    """A BudgetLedger of the reference admin plane."""
    unit = row.unit
    amounts = {name: {"unit": unit.value, "amount": value} for name, value in (
        ("allocated", row.allocated), ("remaining", row.remaining),
        ("reserved", row.reserved), ("spent", row.spent), ("debt", row.debt),
        ("overdraft_limit", row.overdraft_limit))}
    view: dict[str, Any] = {
        "ledger_id": f"{row.scope}|{unit.value}" + (f"|{row.period}" if row.period else ""),
        "tenant_id": tenant, "scope": row.scope, "unit": unit.value, **amounts,
        "is_over_limit": row.is_over_limit, "status": row.status.value}
    if row.period:
        view["period"] = row.period
    return view


def require_admin(settings: Settings, request: Request) -> None:
    """The admin key, or 401."""
    if not admin_key(settings.admin_key, request):
        raise unauthorized("this call needs the X-Admin-API-Key header")


async def acting(settings: Settings, request: Request, named: str | None,
                 permission: str) -> tuple[Guard | TenantGuard, str]:
    """Who manages a tenant's budgets and rules here: the admin key for the tenant it names,
    or a tenant key (with `permission`) for its own tenant only."""
    if admin_key(settings.admin_key, request):
        if named is None:
            raise bad_request("tenant_id: required with the admin key")
        return settings.guard, tenant_name(named, "tenant_id")
    caller = await tenant_key(settings.guard, request, permission)
    request.state.key_id = caller.key.key_id
    if named is not None and tenant_name(named, "tenant_id") != caller.key.tenant:
        raise forbidden("tenant_id is not the tenant of this API key")
    return caller.tenant, caller.key.tenant


class Admin:
    """The admin routes over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/tenants", self.create_tenant, methods=["POST"]),
            Route("/v1/admin/tenants/{tenant_id}", self.get_tenant, methods=["GET"]),
            Route("/v1/admin/api-keys", self.create_key, methods=["POST"]),
            Route("/v1/admin/api-keys", self.list_keys, methods=["GET"]),
            Route("/v1/admin/api-keys/{key_id}", self.revoke_key, methods=["DELETE"]),
            Route("/v1/admin/budgets", self.create_budget, methods=["POST"]),
            Route("/v1/admin/budgets", self.list_budgets, methods=["GET"]),
            Route("/v1/admin/budgets/lookup", self.lookup, methods=["GET"]),
            Route("/v1/admin/budgets/fund", self.fund, methods=["POST"]),
            Route("/v1/admin/budgets/freeze", self.freeze, methods=["POST"]),
            Route("/v1/admin/budgets/unfreeze", self.unfreeze, methods=["POST"]),
        ]

    def _admin(self, request: Request) -> None:
        require_admin(self.s, request)

    async def _acting(self, request: Request, named: str | None,
                      permission: str) -> tuple[Guard | TenantGuard, str]:
        return await acting(self.s, request, named, permission)

    # -- tenants and keys -----------------------------------------------------------------

    async def create_tenant(self, request: Request) -> Response:
        """201 when made, 200 when it exists with that name, 409 under another name."""
        self._admin(request)
        req = wire.parse(TenantBody, await body(request, self.s.max_body))
        info, made = await self.s.guard.aregister_tenant(req.tenant_id, req.name)
        if not made and info.name != req.name:
            raise ApiError(409, "DUPLICATE_RESOURCE", f"tenant {info.tenant} exists with "
                           f"another name ({info.name!r})")
        return json_response(request, tenant_view(info), 201 if made else 200)

    async def get_tenant(self, request: Request) -> Response:
        self._admin(request)
        tenant = request.path_params["tenant_id"]
        info = await self.s.guard.atenant_info(tenant)
        if info is None:
            raise not_found(f"no tenant {tenant!r}")
        return json_response(request, tenant_view(info, await tenant_status(self.s.guard,
                                                                              info.tenant)))

    async def create_key(self, request: Request) -> Response:
        self._admin(request)
        req = wire.parse(KeyBody, await body(request, self.s.max_body))
        expires = None if req.expires_at is None else _epoch_ms(req.expires_at, "expires_at")
        made = await self.s.guard.acreate_key(
            req.tenant_id, permissions=req.permissions or list(RUNTIME), expires=expires,
            name=req.name)
        answer = key_view(made.key)
        answer.update(key_secret=made.secret, key_prefix=made.secret[:14])
        return json_response(request, answer, 201)

    async def list_keys(self, request: Request) -> Response:
        self._admin(request)
        tenant = request.query_params.get("tenant_id")
        if not tenant:
            raise bad_request("tenant_id: required")
        keys = await self.s.guard.akeys(tenant)
        return json_response(request, {"keys": [key_view(k) for k in keys], "has_more": False})

    async def revoke_key(self, request: Request) -> Response:
        self._admin(request)
        key = await self.s.guard.arevoke_key(request.path_params["key_id"])
        return json_response(request, key_view(key))

    # -- budgets ----------------------------------------------------------------------------

    async def create_budget(self, request: Request) -> Response:
        req = wire.parse(BudgetBody, await body(request, self.s.max_body))
        handle, tenant = await self._acting(request, req.tenant_id, "budgets:write")
        path = parse_scope(req.scope)
        if path.tenant != tenant:
            raise bad_request(f"scope: must start with tenant:{tenant}")
        if req.allocated.unit != req.unit or (
                req.overdraft_limit is not None and req.overdraft_limit.unit != req.unit):
            raise ApiError(400, "UNIT_MISMATCH", "allocated and overdraft_limit must be in "
                           f"the budget's unit {req.unit}")
        unit = Unit(req.unit)
        if any(row.unit is unit and row.scope == path.path
               for row in await handle.abalances(path.path, include_children=False)):
            raise ApiError(409, "DUPLICATE_RESOURCE",
                           f"a {unit.value} budget exists at {path.path}")
        overdraft = req.overdraft_limit.amount_() if req.overdraft_limit else 0
        rows = await handle.aset_budget(
            path.path, amount=req.allocated.amount, unit=unit, overdraft_limit=overdraft,
            overage_policy=req.commit_overage_policy or "ALLOW_IF_AVAILABLE")
        row = next(r for r in rows if r.unit is unit)
        return json_response(request, ledger(row, tenant), 201)

    async def _located(self, request: Request, permission: str
                       ) -> tuple[Guard | TenantGuard, str, str, Unit]:
        query = request.query_params
        scope, unit = query.get("scope"), query.get("unit")
        if not scope or not unit:
            raise bad_request("scope and unit: both required as query parameters")
        if unit not in Unit.__members__:
            raise bad_request(f"unit: {unit!r} is not one of " + ", ".join(Unit.__members__))
        handle, tenant = await self._acting(request, query.get("tenant_id"), permission)
        path = parse_scope(scope)
        if path.tenant != tenant:
            raise forbidden(f"scope {path.path} is not in tenant {tenant}")
        return handle, tenant, path.path, Unit(unit)

    async def _ledger(self, handle: Guard | TenantGuard, tenant: str, scope: str,
                      unit: Unit) -> dict[str, Any]:
        rows = [r for r in await handle.abalances(scope, include_children=False)
                if r.unit is unit and r.scope == scope]
        if not rows:
            raise not_found(f"no {unit.value} budget at {scope}")
        return ledger(rows[0], tenant)

    async def lookup(self, request: Request) -> Response:
        handle, tenant, scope, unit = await self._located(request, "budgets:read")
        return json_response(request, await self._ledger(handle, tenant, scope, unit))

    async def list_budgets(self, request: Request) -> Response:
        query = request.query_params
        handle, tenant = await self._acting(request, query.get("tenant_id"), "budgets:read")
        prefix = query.get("scope_prefix") or f"tenant:{tenant}"
        path = parse_scope(prefix)
        if path.tenant != tenant:
            raise forbidden(f"scope_prefix {path.path} is not in tenant {tenant}")
        rows = await handle.abalances(path.path)
        unit, status = query.get("unit"), query.get("status")
        if status is not None and status not in BudgetStatus.__members__:
            raise bad_request(f"status: {status!r} is not ACTIVE, FROZEN or CLOSED")
        picked = [ledger(r, tenant) for r in rows
                  if (unit is None or r.unit.value == unit)
                  and (status is None or r.status.value == status)]
        return json_response(request, {"ledgers": picked, "has_more": False})

    async def fund(self, request: Request) -> Response:
        handle, _, scope, unit = await self._located(request, "budgets:write")
        req = wire.parse(FundBody, await body(request, self.s.max_body))
        if isinstance(req.amount, wire.WireAmount):
            if req.amount.unit != unit.value:
                raise ApiError(400, "UNIT_MISMATCH", f"amount is {req.amount.unit}, the "
                               f"budget {unit.value}")
            value = req.amount.amount
        else:
            value = req.amount
        result = await handle.afund(scope, req.operation, Amount(unit, value), spent=req.spent,
                                    idempotency_key=req.idempotency_key)
        before, after = result.before, result.after
        answer: dict[str, Any] = {"operation": req.operation, "scope": scope,
                                  "unit": unit.value}
        for name in ("allocated", "remaining", "debt", "spent"):
            answer[f"previous_{name}"] = {"unit": unit.value, "amount": getattr(before, name)}
            answer[f"new_{name}"] = {"unit": unit.value, "amount": getattr(after, name)}
        answer["timestamp"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return json_response(request, answer)

    async def _status(self, request: Request, frozen: bool) -> Response:
        self._admin(request)
        handle, tenant, scope, unit = await self._located(request, "admin:write")
        await (handle.afreeze(scope, unit) if frozen else handle.aunfreeze(scope, unit))
        return json_response(request, await self._ledger(handle, tenant, scope, unit))

    async def freeze(self, request: Request) -> Response:
        return await self._status(request, True)

    async def unfreeze(self, request: Request) -> Response:
        return await self._status(request, False)
