"""The reference admin plane's provisioning calls, with their shapes: API keys (admin key:
create, list, update, revoke; introspect and validate), budgets (admin key with
`tenant_id`, or a tenant key with budgets:write inside its own tenant), lookup and list,
fund with its five operations, freeze, unfreeze and the update of a budget's terms (admin
key). Each maps onto one guard call; a tenant key's calls run through its tenant handle.
Lists come in pages (`paging`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from itertools import groupby
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..errors import NotFound
from ..guard import Guard
from ..ids import id_tenant
from ..keys import PERMISSIONS, RUNTIME
from ..models import ApiKey, Balance, BudgetStatus
from ..scopes import parse_scope, tenant_name
from ..tenant import TenantGuard
from . import paging, shapes, wire
from .auth import ADMIN_ACTOR, admin_key, own_tenant, tenant_key
from .context import body, json_response
from .errors import ApiError, bad_request, forbidden, not_found, unauthorized
from .introspect import ValidateBody, credential, introspection, validation
from .runtime import Settings
from .shapes import ledger as ledger
from .shapes import tenant_view as tenant_view

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


class KeyUpdateBody(wire._Strict):
    """The reference's key update. Keys here keep a name and permissions only: a
    description, scope filter or metadata is refused (400) rather than dropped."""

    name: str | None = Field(None, min_length=1, max_length=128)
    permissions: list[str] | None = Field(None, max_length=len(PERMISSIONS))
    description: str | None = None
    scope_filter: list[str] | None = None
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


class BudgetTermsBody(wire._Strict):
    """The reference's budget update. Budgets here keep no metadata: it is refused (400)
    rather than dropped, as a key update refuses what keys do not keep."""

    overdraft_limit: wire.WireAmount | None = None
    commit_overage_policy: wire.PolicyName | None = None
    metadata: wire.Metadata | None = None


class FundBody(wire._Strict):
    operation: FundName
    amount: int | wire.WireAmount
    """An Amount as the reference sends it; a bare integer (in the budget's unit) too."""
    spent: int | wire.WireAmount | None = None
    reason: str | None = Field(None, max_length=512)
    idempotency_key: wire.IdempotencyKey | None = None


class TransitionBody(wire._Strict):
    """The optional body of freeze and unfreeze: why, kept on the audit record."""

    reason: str | None = Field(None, max_length=512)


def _epoch_ms(text: str, field: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"{field}: {text!r} is not an ISO-8601 date-time") from None
    if moment.tzinfo is None:
        raise bad_request(f"{field}: give a time zone (e.g. 2027-01-01T00:00:00Z)")
    return int(moment.timestamp() * 1000)


def _now_ms() -> int:
    return int(time.time() * 1000)


def search_text(query: Mapping[str, str]) -> str | None:
    """The lists' free-text filter: blank is absent, longer than 128 characters is 400."""
    text = (query.get("search") or "").strip() or None
    if text is not None and len(text) > 128:
        raise bad_request(f"search: at most 128 characters, got {len(text)}")
    return None if text is None else text.lower()


async def ledgers(guard: Guard, tenant: str, rows: Iterable[Balance]) -> list[dict[str, Any]]:
    """BudgetLedgers of one tenant's rows, each dated by its budget's definition."""
    picked = list(rows)
    if not picked:
        return []
    defined = await shapes.defined_at(guard, tenant)
    return [ledger(row, tenant, defined.get(shapes.budget_key(row))) for row in picked]


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
    request.state.key_id = caller.key_id
    own_tenant(caller.tenant.name, named, "tenant_id")
    return caller.tenant, caller.tenant.name


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
            Route("/v1/admin/api-keys/{key_id}", self.update_key, methods=["PATCH"]),
            Route("/v1/admin/budgets", self.create_budget, methods=["POST"]),
            Route("/v1/admin/budgets", self.list_budgets, methods=["GET"]),
            Route("/v1/admin/budgets", self.update_budget, methods=["PATCH"]),
            Route("/v1/admin/budgets/lookup", self.lookup, methods=["GET"]),
            Route("/v1/admin/budgets/fund", self.fund, methods=["POST"]),
            Route("/v1/admin/budgets/freeze", self.freeze, methods=["POST"]),
            Route("/v1/admin/budgets/unfreeze", self.unfreeze, methods=["POST"]),
            Route("/v1/auth/introspect", self.introspect, methods=["GET"]),
            Route("/v1/auth/validate", self.validate_key, methods=["POST"]),
        ]

    def _admin(self, request: Request) -> None:
        require_admin(self.s, request)

    async def _caller(self, request: Request, permission: str, named: str | None
                      ) -> tuple[Guard | TenantGuard, str | None]:
        """The admin key (the guard, no tenant yet) or a tenant key with `permission` (its
        tenant's handle and name). A tenant key naming another tenant in `tenant_id` is
        403, its own is accepted (the reference ignores it on reads and fund and refuses it
        on create; here another tenant's name is refused alike everywhere)."""
        if admin_key(self.s.admin_key, request):
            return self.s.guard, None
        caller = await tenant_key(self.s.guard, request, permission)
        request.state.key_id = caller.key_id
        own_tenant(caller.tenant.name, named, "tenant_id")
        return caller.tenant, caller.tenant.name

    # -- tenants and keys -----------------------------------------------------------------

    async def create_tenant(self, request: Request) -> Response:
        """201 when made, 200 when it exists with that name, 409 under another name."""
        self._admin(request)
        req = wire.parse(TenantBody, await body(request, self.s.max_body))
        info, made = await self.s.guard.aregister_tenant(req.tenant_id, req.name)
        if not made and info.name != req.name:
            raise ApiError(409, "DUPLICATE_RESOURCE", f"tenant {info.tenant} exists with "
                           f"another name ({info.name!r})")
        state = await self.s.guard.atenant_status(info.tenant)  # suspended, closed: so
        return json_response(request, tenant_view(info, info.tenant, state),
                             201 if made else 200)

    async def get_tenant(self, request: Request) -> Response:
        """A registered tenant, or one the library made without a record (as the list
        shows it); 404 when the store holds neither."""
        self._admin(request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        info = await self.s.guard.atenant_info(tenant)
        if info is None and tenant not in await self.s.guard.atenants():
            raise ApiError(404, "TENANT_NOT_FOUND", f"no tenant {tenant!r}")
        return json_response(request, tenant_view(
            info, tenant, await self.s.guard.atenant_status(tenant)))

    async def create_key(self, request: Request) -> Response:
        self._admin(request)
        req = wire.parse(KeyBody, await body(request, self.s.max_body))
        expires = None if req.expires_at is None else _epoch_ms(req.expires_at, "expires_at")
        made = await self.s.guard.acreate_key(
            req.tenant_id, permissions=req.permissions or list(RUNTIME), expires=expires,
            name=req.name)
        answer = shapes.key_view(made.key, _now_ms())
        answer["key_secret"] = made.secret
        return json_response(request, answer, 201)

    async def list_keys(self, request: Request) -> Response:
        """One tenant's keys. The reference also lists every tenant's without `tenant_id`;
        here that is refused, since the store cannot yet name every tenant holding a key."""
        self._admin(request)
        query = request.query_params
        status, search = query.get("status"), search_text(query)
        if status is not None and status not in ("ACTIVE", "REVOKED", "EXPIRED"):
            raise bad_request(f"status: {status!r} is not ACTIVE, REVOKED or EXPIRED")
        named = query.get("tenant_id")
        if not named:  # the store lists tenants with a change on record, not every key's
            raise bad_request("tenant_id: required (keys are listed one tenant at a time)")
        asked, now = paging.window(query), _now_ms()
        kept = [key for key in await self.s.guard.akeys(tenant_name(named, "tenant_id"))
                if (status is None or shapes.key_status(key, now) == status)
                and (search is None or search in f"{key.key_id}\n{key.name}".lower())]
        page, more = paging.paged(kept, _key_order, asked)
        return json_response(request, {"keys": [shapes.key_view(key, now) for key in page],
                                       **more})

    async def revoke_key(self, request: Request) -> Response:
        """200 with the revoked key; 404 for no such key, 409 when already revoked."""
        self._admin(request)
        reason = request.query_params.get("reason")
        if reason is not None and len(reason) > 512:
            raise bad_request(f"reason: at most 512 characters, got {len(reason)}")
        key_id = request.path_params["key_id"]
        known = [k for k in await self.s.guard.akeys(id_tenant(key_id)) if k.key_id == key_id]
        if not known:
            raise not_found(f"no API key {key_id!r}")
        if known[0].revoked:
            raise ApiError(409, "KEY_REVOKED", f"API key {key_id} is already revoked")
        key = await self.s.guard.arevoke_key(key_id)
        return json_response(request, shapes.key_view(key, _now_ms()))

    async def update_key(self, request: Request) -> Response:
        """200 with the key renamed or its permissions replaced, in one store step; 404 for
        no such key, 409 (KEY_REVOKED, KEY_EXPIRED) when it is no longer live."""
        self._admin(request)
        req = wire.parse(KeyUpdateBody, await body(request, self.s.max_body))
        for field in ("description", "scope_filter", "metadata"):
            if getattr(req, field) is not None:
                raise bad_request(f"{field}: API keys here keep no {field}; "
                                  "give name or permissions")
        if req.name is None and req.permissions is None:
            raise bad_request("give name, permissions or both")
        key_id = request.path_params["key_id"]
        key, changed = await self.s.guard.aupdate_key(key_id, name=req.name,
                                                      permissions=req.permissions)
        if not changed:
            state = "revoked" if key.revoked else "expired"
            raise ApiError(409, f"KEY_{state.upper()}", f"API key {key_id} is {state}: it "
                           "cannot change")
        return json_response(request, shapes.key_view(key, _now_ms()))

    async def introspect(self, request: Request) -> Response:
        """The admin key's capabilities, or a live tenant key's (any permission); else 401."""
        return json_response(request, introspection(await credential(self.s, request)))

    async def validate_key(self, request: Request) -> Response:
        """Admin key only; 200 whether or not the secret is valid, saying why not."""
        self._admin(request)
        req = wire.parse(ValidateBody, await body(request, self.s.max_body))
        check = await self.s.guard.avalidate_key(req.key_secret)
        return json_response(request, validation(check))

    # -- budgets ----------------------------------------------------------------------------

    async def create_budget(self, request: Request) -> Response:
        """The admin key names the tenant in `tenant_id`; a tenant key its own or none."""
        req = wire.parse(BudgetBody, await body(request, self.s.max_body))
        handle, own = await self._caller(request, "budgets:write", req.tenant_id)
        if own is None and req.tenant_id is None:
            raise bad_request("tenant_id: required with the admin key")
        tenant = own or tenant_name(req.tenant_id, "tenant_id")
        path = parse_scope(req.scope)
        if path.tenant != tenant:
            if own is not None:
                raise forbidden(f"scope {path.path} is not in tenant {tenant}")
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
        return json_response(request, (await ledgers(self.s.guard, tenant, [row]))[0], 201)

    async def _located(self, request: Request, permission: str, *,
                       admin_names_tenant: bool = False
                       ) -> tuple[Guard | TenantGuard, str, str, Unit]:
        """The budget `?scope&unit` names, and who acts on it. A tenant key reaches its own
        tenant's scopes only (403). The admin key reaches any; with `admin_names_tenant`
        (fund) it must say the tenant in `tenant_id`, and a given `tenant_id` must be the
        scope's."""
        query = request.query_params
        scope, unit = query.get("scope"), query.get("unit")
        if not scope or not unit:
            raise bad_request("scope and unit: both required as query parameters")
        if unit not in Unit.__members__:
            raise bad_request(f"unit: {unit!r} is not one of " + ", ".join(Unit.__members__))
        named = query.get("tenant_id")
        handle, own = await self._caller(request, permission, named)
        path = parse_scope(scope)
        if own is not None:
            if path.tenant != own:
                raise forbidden(f"scope {path.path} is not in tenant {own}")
            return handle, own, path.path, Unit(unit)
        if named is None and admin_names_tenant:
            raise bad_request("tenant_id: required with the admin key")
        if named is not None and tenant_name(named, "tenant_id") != path.tenant:
            raise bad_request(f"scope {path.path} is not in tenant_id {named}")
        return handle, path.tenant, path.path, Unit(unit)

    async def _ledger(self, handle: Guard | TenantGuard, tenant: str, scope: str,
                      unit: Unit) -> dict[str, Any]:
        rows = [r for r in await handle.abalances(scope, include_children=False)
                if r.unit is unit and r.scope == scope]
        if not rows:
            raise ApiError(404, "BUDGET_NOT_FOUND", f"no {unit.value} budget at {scope}")
        return (await ledgers(self.s.guard, tenant, rows[:1]))[0]

    async def lookup(self, request: Request) -> Response:
        handle, tenant, scope, unit = await self._located(request, "budgets:read")
        return json_response(request, await self._ledger(handle, tenant, scope, unit))

    async def list_budgets(self, request: Request) -> Response:
        """One tenant's ledgers (a tenant key: its own), or every tenant's for the admin
        key without `tenant_id`; filtered by scope prefix, unit, status, over-limit, debt,
        utilization and search."""
        query = request.query_params
        named = query.get("tenant_id")
        handle, own = await self._caller(request, "budgets:read", named)
        keep, asked = _filters(query), paging.window(query)
        tenants = ([own] if own is not None else
                   [tenant_name(named, "tenant_id")] if named else
                   list(await self.s.guard.atenants()))
        prefix = query.get("scope_prefix")
        picked: list[tuple[str, Balance]] = []
        for tenant in tenants:
            where = f"tenant:{tenant}"
            if prefix:
                path = parse_scope(prefix)
                if path.tenant != tenant:
                    if own is not None:
                        raise forbidden(f"scope_prefix {path.path} is not in tenant {tenant}")
                    continue
                where = path.path
            picked.extend((tenant, row) for row in await handle.abalances(where)
                          if keep(row, tenant))
        page, more = paging.paged(picked, _ledger_order, asked)
        views: list[dict[str, Any]] = []
        for tenant, rows in groupby(page, key=lambda pair: pair[0]):  # dated once a tenant
            views.extend(await ledgers(self.s.guard, tenant, (row for _, row in rows)))
        return json_response(request, {"ledgers": views, **more})

    async def fund(self, request: Request) -> Response:
        handle, _, scope, unit = await self._located(request, "budgets:write",
                                                     admin_names_tenant=True)
        req = wire.parse(FundBody, await body(request, self.s.max_body))
        value = _in_unit(req.amount, unit, "amount")
        spent = None if req.spent is None else _in_unit(req.spent, unit, "spent")
        result = await handle.afund(scope, req.operation, Amount(unit, value), spent=spent,
                                    idempotency_key=req.idempotency_key, reason=req.reason)
        before, after = result.before, result.after
        answer: dict[str, Any] = {"operation": req.operation, "scope": scope,
                                  "unit": unit.value}
        for name in ("allocated", "remaining", "debt", "spent"):
            answer[f"previous_{name}"] = {"unit": unit.value, "amount": getattr(before, name)}
            answer[f"new_{name}"] = {"unit": unit.value, "amount": getattr(after, name)}
        answer["timestamp"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        return json_response(request, answer)

    async def update_budget(self, request: Request) -> Response:
        """Admin key only: a new overdraft limit and/or commit overage policy for the
        budgets at `?scope&unit` (each period there), in one store step that keeps their
        figures and recomputes `is_over_limit`; answers the budget as lookup does."""
        self._admin(request)
        handle, tenant, scope, unit = await self._located(request, "admin:write")
        req = wire.parse(BudgetTermsBody, await body(request, self.s.max_body))
        if req.metadata is not None:
            raise bad_request("metadata: budgets here keep no metadata; give "
                              "overdraft_limit, commit_overage_policy or both")
        if req.overdraft_limit is None and req.commit_overage_policy is None:
            raise bad_request("give overdraft_limit, commit_overage_policy or both")
        if req.overdraft_limit is not None and req.overdraft_limit.unit != unit.value:
            raise ApiError(400, "UNIT_MISMATCH", f"overdraft_limit is "
                           f"{req.overdraft_limit.unit}, the budget {unit.value}")
        limit = None if req.overdraft_limit is None else req.overdraft_limit.amount_()
        try:
            await handle.aset_budget_terms(scope, unit, overdraft_limit=limit,
                                           overage_policy=req.commit_overage_policy,
                                           actor=ADMIN_ACTOR)
        except NotFound:
            raise ApiError(404, "BUDGET_NOT_FOUND", f"no {unit.value} budget at "
                           f"{scope}") from None
        return json_response(request, await self._ledger(handle, tenant, scope, unit))

    async def _status(self, request: Request, frozen: bool) -> Response:
        """Admin key only; 409 when the budget is already in the asked state."""
        self._admin(request)
        handle, tenant, scope, unit = await self._located(request, "admin:write")
        raw = await body(request, self.s.max_body)
        req = wire.parse(TransitionBody, raw) if raw.strip() else TransitionBody()
        current = await self._ledger(handle, tenant, scope, unit)
        wanted = BudgetStatus.FROZEN if frozen else BudgetStatus.ACTIVE
        if current["status"] == wanted.value:
            raise ApiError(409, "INVALID_REQUEST", f"the {unit.value} budget at {scope} is "
                           f"already {wanted.value}")
        if current["status"] == BudgetStatus.CLOSED.value:
            raise ApiError(409, "BUDGET_CLOSED", f"the {unit.value} budget at {scope} is "
                           "closed")
        call = handle.afreeze if frozen else handle.aunfreeze
        await call(scope, unit, actor=ADMIN_ACTOR, reason=req.reason)
        return json_response(request, await self._ledger(handle, tenant, scope, unit))

    async def freeze(self, request: Request) -> Response:
        return await self._status(request, True)

    async def unfreeze(self, request: Request) -> Response:
        return await self._status(request, False)


def _key_order(key: ApiKey) -> list[str]:
    """Keys page oldest first, as the store lists them."""
    return [f"{key.created_at_ms:020d}", key.key_id]


def _ledger_order(pair: tuple[str, Balance]) -> list[str]:
    """Ledgers page by tenant, then scope, unit, period and bucket."""
    tenant, row = pair
    return [tenant, row.scope, row.unit.value, row.period or "", row.bucket]


def _in_unit(amount: int | wire.WireAmount, unit: Unit, field: str) -> int:
    """A fund amount: an Amount in the budget's unit, or a bare integer taken as one."""
    if isinstance(amount, int):
        return amount
    if amount.unit != unit.value:
        raise ApiError(400, "UNIT_MISMATCH", f"{field} is {amount.unit}, the budget "
                       f"{unit.value}")
    return amount.amount


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    text = query.get(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise bad_request(f"{name}: {text!r} is not true or false")
    return text == "true"


def _fraction(query: Mapping[str, str], name: str) -> float | None:
    """A utilization bound in [0, 1] (a ratio for filtering, never an amount)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise bad_request(f"{name}: {text!r} is not a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise bad_request(f"{name}: {text!r} is not between 0 and 1")
    return value


def _filters(query: Mapping[str, str]) -> Callable[[Balance, str], bool]:
    """The list's filters, checked before anything is read; AND of all given."""
    unit, status = query.get("unit"), query.get("status")
    if unit is not None and unit not in Unit.__members__:
        raise bad_request(f"unit: {unit!r} is not one of " + ", ".join(Unit.__members__))
    if status is not None and status not in BudgetStatus.__members__:
        raise bad_request(f"status: {status!r} is not ACTIVE, FROZEN or CLOSED")
    return ledger_filter(unit, status, _flag(query, "over_limit"), _flag(query, "has_debt"),
                         _fraction(query, "utilization_min"),
                         _fraction(query, "utilization_max"), search_text(query))


def ledger_filter(unit: str | None, status: str | None, over: bool | None, debt: bool | None,
                  low: float | None, high: float | None, search: str | None
                  ) -> Callable[[Balance, str], bool]:
    """Whether a tenant's ledger passes every filter given (None: not filtered), as the
    budget list and the budgets' bulk action read them."""
    if low is not None and high is not None and low > high:
        raise bad_request(f"utilization_min ({low}) is above utilization_max ({high})")

    def keep(row: Balance, tenant: str) -> bool:
        used = row.spent / row.allocated if row.allocated > 0 else 0.0
        return ((unit is None or row.unit.value == unit)
                and (status is None or row.status.value == status)
                and (over is None or row.is_over_limit == over)
                and (debt is None or (row.debt > 0) == debt)
                and (low is None or used >= low) and (high is None or used <= high)
                and (search is None or search in f"{tenant}\n{row.scope}".lower()))
    return keep
