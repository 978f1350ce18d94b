"""Tiers over HTTP (admin key): the server's catalog of plans, a tenant's plan (assigned,
upgraded mid-month by assigning again) and its mode. The guard keeps which plan a tenant is
on and what it installed, not the tiers themselves, so the catalog is the server's: loaded
at start (`allotment serve --plans FILE`) in every worker, and added to over HTTP only when
one process serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..plans import Plan
from ..scopes import tenant_name
from ..validation import MAX_LIST, MAX_NAME, MAX_TEXT
from . import wire
from .admin import require_admin
from .auth import ADMIN_ACTOR
from .context import body, json_response
from .errors import ApiError, bad_request, not_found
from .runtime import Settings

MAX_PLANS = 256
"""Plans a server's catalog holds: tiers are few, and each is held in every worker."""
_EXACT_FLOATS = frozenset({"degrade", "alerts"})
"""Plan entry fields that hold fractions (floats are fine there); every other number in a
plan is money or a count and must be exact."""


class Signed(wire._Strict):
    """Who makes an administrative change and why, kept on its audit records."""

    actor: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    reason: str | None = Field(None, min_length=1, max_length=MAX_TEXT)


def signed(body: Signed, default_actor: str) -> dict[str, str | None]:
    return {"actor": body.actor or default_actor, "reason": body.reason}


class PlanBody(wire._Strict):
    """A plan in the `plans:` format of `al.Plan` (examples/plans.yaml), as JSON; each entry
    is checked by `al.Plan` itself."""

    name: str | None = Field(None, min_length=1, max_length=MAX_NAME)
    mode: Literal["enforce", "shadow"] | None = None
    budgets: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)
    quotas: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)
    access: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_LIST)


class AssignBody(Signed):
    plan: str | PlanBody
    """The name of a plan defined on this server, or a whole plan (with its `name`)."""


class ModeBody(Signed):
    mode: Literal["enforce", "shadow"] | None
    """null follows the guard's own mode."""


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


class Tiers:
    """The plan and mode routes over one guard, and the server's catalog of plans."""

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
        ]

    async def _read(self, request: Request, model: type[wire._M]) -> wire._M:
        return wire.parse(model, await body(request, self.s.max_body))

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
        await self.s.guard.aassign_plan(tenant, plan, **signed(req, ADMIN_ACTOR))
        answer: dict[str, Any] = {"tenant_id": tenant, "plan": plan.name}
        if previous is not None:
            answer["previous_plan"] = previous
        return json_response(request, answer)

    async def mode(self, request: Request) -> Response:
        require_admin(self.s, request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        req = await self._read(request, ModeBody)
        await self.s.guard.aset_mode(tenant, req.mode, **signed(req, ADMIN_ACTOR))
        answer: dict[str, Any] = {"tenant_id": tenant}
        answer["mode"] = req.mode or self.s.guard.mode
        answer["follows_guard"] = req.mode is None
        return json_response(request, answer)
