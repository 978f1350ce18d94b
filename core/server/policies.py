"""allotment's own features over HTTP, on paths of their own (DESIGN §11): plans, quotas,
access rules, a tenant's mode, transfers and the sweep. Each route authenticates, reads a
strict body and makes one guard call; no Cycles shape is changed.

Who may call: plans, modes and the sweep are the platform operator's (admin key). Quotas,
access rules and transfers manage one tenant's envelope: the admin key naming `tenant_id`, or
a tenant key with `budgets:write` inside its own tenant only (the enterprise admin moving
money between departments).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..plans import Plan
from ..scopes import parse_scope, tenant_name
from ..validation import MAX_LIST, MAX_NAME, MAX_TEXT
from . import wire
from .admin import acting, ledger, require_admin
from .context import body, json_response
from .errors import ApiError, bad_request, forbidden, not_found
from .runtime import Settings
from .tenancy import Tenancy

WRITE = "budgets:write"
Scope = Field(min_length=1, max_length=2048)
Actor = Field(None, min_length=1, max_length=MAX_NAME)
Reason = Field(None, min_length=1, max_length=MAX_TEXT)
MAX_PLANS = 256
"""Plans a server's catalog holds: tiers are few, and each is held in every worker."""
_EXACT_FLOATS = frozenset({"degrade", "alerts"})
"""Plan entry fields that hold fractions (floats are fine there); every other number in a
plan is money or a count and must be exact."""


class _Signed(wire._Strict):
    actor: str | None = Actor
    reason: str | None = Reason


class PlanBody(wire._Strict):
    """A plan in the `plans:` format of `al.Plan` (examples/plans.yaml), as JSON; each entry
    is checked by `al.Plan` itself."""

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    mode: Literal["enforce", "shadow"] | None = None
    budgets: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)
    quotas: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)
    access: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)


class AssignBody(_Signed):
    plan: str | PlanBody
    """The name of a plan defined on this server, or a whole plan (with its `name`)."""


class ModeBody(_Signed):
    mode: Literal["enforce", "shadow"] | None
    """null follows the guard's own mode."""


class QuotaBody(_Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    scope: str = Scope
    calls: int | None = Field(None, ge=1)
    runs: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)
    window: str | None = Field(None, min_length=1, max_length=16)
    action_kind: str = Field("*", min_length=1, max_length=64)


class AccessBody(_Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    scope: str = Scope
    models_allow: list[str] | None = None
    models_deny: list[str] | None = None
    tools_allow: list[str] | None = None
    tools_deny: list[str] | None = None
    max_tokens_per_call: int | None = None
    required_dimensions: list[str] | None = None


class TransferBody(_Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    source: str = Scope
    destination: str = Scope
    amount: wire.WireAmount
    idempotency_key: wire.IdempotencyKey | None = None


class SweepBody(wire._Strict):
    limit: int = Field(1_000, ge=1, le=100_000)


def plan_view(plan: Plan) -> dict[str, Any]:
    """A plan in the format it is defined in (dollars as decimal strings: exact)."""
    view: dict[str, Any] = plan.model_dump(mode="json", exclude_defaults=True)
    return view


def to_plan(given: PlanBody, name: str | None = None) -> Plan:
    """`al.Plan` from a checked body; a float where money or a count is due is refused."""
    if name is not None and given.name is not None and given.name != name:
        raise bad_request(f"name: the body names plan {given.name!r}, the path {name!r}")
    data = given.model_dump(exclude_none=True)
    for section in ("budgets", "quotas", "access"):
        for i, entry in enumerate(data[section]):
            for key, value in entry.items():
                if isinstance(value, float) and key not in _EXACT_FLOATS:
                    raise bad_request(f"{section}[{i}].{key}: give a JSON integer, or dollars "
                                      f"as a decimal string such as \"0.50\" (got {value}: a "
                                      "float is not exact)")
    if name is None and given.name is None:
        raise bad_request("plan.name: required (the name of the tier)")
    return Plan.from_dict(data, name)


def _signed(body: _Signed, default_actor: str) -> dict[str, str | None]:
    return {"actor": body.actor or default_actor, "reason": body.reason}


class Policies:
    """The routes of allotment's own features over one guard, and its catalog of plans."""

    def __init__(self, settings: Settings, plans: Mapping[str, Plan] | None = None,
                 define_plans: bool = True) -> None:
        self.s = settings
        self.plans: dict[str, Plan] = dict(plans or {})
        self.define_plans = define_plans

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/plans", self.list_plans, methods=["GET"]),
            Route("/v1/admin/plans/{name}", self.get_plan, methods=["GET"]),
            Route("/v1/admin/plans/{name}", self.define_plan, methods=["PUT"]),
            Route("/v1/admin/tenants/{tenant_id}/plan", self.plan_of, methods=["GET"]),
            Route("/v1/admin/tenants/{tenant_id}/plan", self.assign, methods=["PUT"]),
            Route("/v1/admin/tenants/{tenant_id}/mode", self.mode, methods=["PUT"]),
            Route("/v1/admin/quotas", self.set_quota, methods=["POST"]),
            Route("/v1/admin/quotas", self.remove_quota, methods=["DELETE"]),
            Route("/v1/admin/access", self.set_access, methods=["PUT"]),
            Route("/v1/admin/access", self.clear_access, methods=["DELETE"]),
            Route("/v1/admin/transfers", self.transfer, methods=["POST"]),
            Route("/v1/admin/sweep", self.sweep, methods=["POST"]),
            *Tenancy(self.s).routes(),
        ]

    async def _read(self, request: Request, model: type[wire._M]) -> wire._M:
        return wire.parse(model, await body(request, self.s.max_body))

    # -- plans (admin key) ------------------------------------------------------------------

    async def list_plans(self, request: Request) -> Response:
        require_admin(self.s, request)
        return json_response(request, {"plans": [plan_view(p) for _, p in
                                                 sorted(self.plans.items())]})

    def _plan(self, name: str) -> Plan:
        plan = self.plans.get(name)
        if plan is None:
            raise not_found(f"no plan {name!r} on this server; it has "
                            f"{sorted(self.plans) or 'none'} (define one with PUT "
                            "/v1/admin/plans/{name})")
        return plan

    async def get_plan(self, request: Request) -> Response:
        require_admin(self.s, request)
        return json_response(request, plan_view(self._plan(request.path_params["name"])))

    async def define_plan(self, request: Request) -> Response:
        """201 when new, 200 when it replaces a plan of that name (tenants on the old one
        keep it until assigned again)."""
        require_admin(self.s, request)
        if not self.define_plans:
            raise ApiError(409, "INVALID_REQUEST", "plans are defined when this server starts "
                           "(allotment serve --plans FILE): with several workers, a plan "
                           "defined over HTTP would reach one worker only; assign a whole "
                           "plan to a tenant instead (PUT /v1/admin/tenants/{id}/plan)")
        name = request.path_params["name"]
        plan = to_plan(await self._read(request, PlanBody), name)
        made = plan.name not in self.plans
        if made and len(self.plans) >= MAX_PLANS:
            raise ApiError(409, "INVALID_REQUEST", f"this server holds {MAX_PLANS} plans, "
                           "the most it keeps; replace one of them instead")
        self.plans[plan.name] = plan
        return json_response(request, plan_view(plan), 201 if made else 200)

    async def plan_of(self, request: Request) -> Response:
        """The tenant's plan and who assigned it last, when and why (from the audit log)."""
        require_admin(self.s, request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        answer: dict[str, Any] = {"tenant_id": tenant}
        name = await self.s.guard.aplan_of(tenant)
        if name is not None:
            answer["plan"] = name
            records = await self.s.guard.aaudit(tenant, types=["plan.assigned"],
                                                limit=100_000)
            if records:
                last = records[-1]
                answer["assigned_at_ms"] = last.at_ms
                answer.update({k: v for k, v in (("actor", last.actor),
                                                 ("reason", last.reason)) if v is not None})
        return json_response(request, answer)

    async def assign(self, request: Request) -> Response:
        """Put the tenant on a plan in one step; assigning again (an upgrade mid-month)
        changes limits in place and keeps the period's spend."""
        require_admin(self.s, request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        req = await self._read(request, AssignBody)
        plan = self._plan(req.plan) if isinstance(req.plan, str) else to_plan(req.plan)
        previous = await self.s.guard.aplan_of(tenant)
        await self.s.guard.aassign_plan(tenant, plan, **_signed(req, "admin-key"))
        answer: dict[str, Any] = {"tenant_id": tenant, "plan": plan.name}
        if previous is not None:
            answer["previous_plan"] = previous
        return json_response(request, answer)

    async def mode(self, request: Request) -> Response:
        require_admin(self.s, request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        req = await self._read(request, ModeBody)
        await self.s.guard.aset_mode(tenant, req.mode, **_signed(req, "admin-key"))
        answer: dict[str, Any] = {"tenant_id": tenant}
        answer["mode"] = req.mode or self.s.guard.mode
        answer["follows_guard"] = req.mode is None
        return json_response(request, answer)

    # -- one tenant's envelope (admin key with tenant_id, or budgets:write) ----------------------

    async def _scoped(self, request: Request, named: str | None, scope: str
                      ) -> tuple[Any, str, str, str]:
        """(handle, tenant, scope, default actor): the scope must be in the acting tenant."""
        handle, tenant = await acting(self.s, request, named, WRITE)
        path = parse_scope(scope)
        if path.tenant != tenant:
            raise forbidden(f"scope {path.path} is not in tenant {tenant}")
        key_id = getattr(request.state, "key_id", None)
        return handle, tenant, path.path, "admin-key" if key_id is None else f"key:{key_id}"

    async def set_quota(self, request: Request) -> Response:
        req = await self._read(request, QuotaBody)
        handle, tenant, scope, actor = await self._scoped(request, req.tenant_id, req.scope)
        await handle.aset_quota(scope, calls=req.calls, runs=req.runs,
                                concurrent=req.concurrent, window=req.window,
                                action_kind=req.action_kind, **_signed(req, actor))
        kind = next(k for k in ("calls", "runs", "concurrent") if getattr(req, k) is not None)
        answer: dict[str, Any] = {"tenant_id": tenant, "scope": scope, "kind": kind,
                                  "limit": getattr(req, kind), "action_kind": req.action_kind}
        if req.window is not None:
            answer["window"] = req.window
        return json_response(request, answer)

    async def remove_quota(self, request: Request) -> Response:
        query = request.query_params
        scope, kind = query.get("scope"), query.get("kind")
        if not scope or not kind:
            raise bad_request("scope and kind (calls, runs or concurrent): both required as "
                              "query parameters")
        unknown = set(query) - {"scope", "kind", "window", "action_kind", "tenant_id"}
        if unknown:
            raise bad_request(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        handle, tenant, path, actor = await self._scoped(request, query.get("tenant_id"),
                                                         scope)
        window, action_kind = query.get("window") or None, query.get("action_kind") or "*"
        await handle.aremove_quota(path, kind, window=window, action_kind=action_kind,
                                   actor=actor)
        answer: dict[str, Any] = {"tenant_id": tenant, "scope": path, "kind": kind,
                                  "action_kind": action_kind, "removed": True}
        if window is not None:
            answer["window"] = window
        return json_response(request, answer)

    async def set_access(self, request: Request) -> Response:
        """Replace the access rules of a scope (every rule given at once)."""
        req = await self._read(request, AccessBody)
        handle, tenant, scope, actor = await self._scoped(request, req.tenant_id, req.scope)
        rules = req.model_dump(exclude_none=True, exclude={"tenant_id", "scope", "actor",
                                                           "reason"})
        await handle.aset_access(scope, **rules, **_signed(req, actor))
        return json_response(request, {"tenant_id": tenant, "scope": scope, **rules})

    async def clear_access(self, request: Request) -> Response:
        query = request.query_params
        scope = query.get("scope")
        if not scope:
            raise bad_request("scope: required as a query parameter")
        unknown = set(query) - {"scope", "tenant_id"}
        if unknown:
            raise bad_request(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        handle, tenant, path, actor = await self._scoped(request, query.get("tenant_id"),
                                                         scope)
        await handle.aclear_access(path, actor=actor)
        return json_response(request, {"tenant_id": tenant, "scope": path, "cleared": True})

    async def transfer(self, request: Request) -> Response:
        """Move allocation between two budgets of one tenant in one atomic step; a replay
        under the same idempotency key answers the first result."""
        req = await self._read(request, TransferBody)
        header = request.headers.get("x-idempotency-key")
        if header is not None and header != req.idempotency_key:
            raise bad_request("X-Idempotency-Key header and body idempotency_key differ")
        handle, tenant, source, actor = await self._scoped(request, req.tenant_id,
                                                           req.source)
        destination = parse_scope(req.destination)
        if destination.tenant != tenant:
            raise forbidden(f"destination {destination.path} is not in tenant {tenant}")
        unit = Unit(req.amount.unit)
        moved = await handle.atransfer(source, destination.path,
                                       Amount(unit, req.amount.amount),
                                       idempotency_key=req.idempotency_key,
                                       **_signed(req, actor))
        return json_response(request, {
            "tenant_id": tenant, "amount": wire.amount(Amount(unit, req.amount.amount)),
            "source": ledger(moved.source, tenant),
            "destination": ledger(moved.destination, tenant)})

    # -- the sweep (admin key) --------------------------------------------------------------

    async def sweep(self, request: Request) -> Response:
        """Expire up to `limit` overdue reservations now, across tenants."""
        require_admin(self.s, request)
        raw = await body(request, self.s.max_body)
        limit = wire.parse(SweepBody, raw).limit if raw else SweepBody().limit
        expired = await self.s.guard.asweep(limit=limit)
        return json_response(request, {"expired": expired, "limit": limit})
