"""allotment's own features over HTTP, on paths of their own (DESIGN §11): quotas, access
rules, transfers and the sweep here; plans and modes in `tiers`, the tenant list and status
in `tenancy`. Each route authenticates, reads a strict body and makes one guard call; no
Cycles shape is changed.

Quotas, access rules and transfers manage one tenant's envelope: the admin key naming
`tenant_id`, or a tenant key with `budgets:write` inside its own tenant only (the enterprise
admin moving money between departments). The sweep is the platform operator's (admin key).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..amounts import Amount, Unit
from ..budgets import set_access_op, set_quota_op
from ..plans import Plan
from ..scopes import parse_scope
from . import wire
from .admin import acting, ledgers, require_admin
from .auth import ADMIN_ACTOR
from .context import body, json_response
from .errors import bad_request, forbidden
from .runtime import Settings
from .tenancy import Tenancy
from .tiers import Signed, Tiers, signed

WRITE = "budgets:write"
Scope = Field(min_length=1, max_length=2048)
_ACCESS_FIELDS = ("models_allow", "models_deny", "tools_allow", "tools_deny",
                  "max_tokens_per_call", "required_dimensions")


class QuotaBody(Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    scope: str = Scope
    calls: int | None = Field(None, ge=1)
    runs: int | None = Field(None, ge=1)
    concurrent: int | None = Field(None, ge=1)
    window: str | None = Field(None, min_length=1, max_length=16)
    action_kind: str = Field("*", min_length=1, max_length=64)


class AccessBody(Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    scope: str = Scope
    models_allow: list[str] | None = None
    models_deny: list[str] | None = None
    tools_allow: list[str] | None = None
    tools_deny: list[str] | None = None
    max_tokens_per_call: int | None = None
    required_dimensions: list[str] | None = None


class TransferBody(Signed):
    tenant_id: str | None = Field(None, min_length=1, max_length=128)
    source: str = Scope
    destination: str = Scope
    amount: wire.WireAmount
    idempotency_key: wire.IdempotencyKey | None = None


class SweepBody(wire._Strict):
    limit: int = Field(1_000, ge=1, le=100_000)


class Policies:
    """The routes of allotment's own features over one guard (plans and modes in `tiers`,
    the tenant list and status in `tenancy`)."""

    def __init__(self, settings: Settings, plans: Mapping[str, Plan] | None = None,
                 define_plans: bool = True) -> None:
        self.s = settings
        self.tiers = Tiers(settings, plans, define_plans)

    def routes(self) -> list[Route]:
        return [
            *self.tiers.routes(),
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

    # -- one tenant's envelope (admin key with tenant_id, or budgets:write) ----------------------

    async def _scoped(self, request: Request, named: str | None, scope: str
                      ) -> tuple[Any, str, str, str]:
        """(handle, tenant, scope, default actor): the scope must be in the acting tenant."""
        handle, tenant = await acting(self.s, request, named, WRITE)
        path = parse_scope(scope)
        if path.tenant != tenant:
            raise forbidden(f"scope {path.path} is not in tenant {tenant}")
        key_id = getattr(request.state, "key_id", None)
        return handle, tenant, path.path, ADMIN_ACTOR if key_id is None else f"key:{key_id}"

    async def set_quota(self, request: Request) -> Response:
        req = await self._read(request, QuotaBody)
        handle, tenant, scope, actor = await self._scoped(request, req.tenant_id, req.scope)
        given: dict[str, Any] = {"calls": req.calls, "runs": req.runs,
                                 "concurrent": req.concurrent, "window": req.window,
                                 "action_kind": req.action_kind}
        rule = set_quota_op(scope, **given).rule  # the rule as the guard keeps it, to answer
        await handle.aset_quota(scope, **given, **signed(req, actor))
        answer: dict[str, Any] = {"tenant_id": tenant, "scope": rule.scope,
                                  "kind": rule.kind.value, "limit": rule.limit,
                                  "action_kind": rule.action_kind}
        if rule.window is not None:
            answer["window"] = rule.window.value
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
        rule = set_access_op(scope, **rules).rule  # as the guard keeps it, to answer
        await handle.aset_access(scope, **rules, **signed(req, actor))
        assert rule is not None
        answer: dict[str, Any] = {"tenant_id": tenant, "scope": rule.scope}
        for name in _ACCESS_FIELDS:
            value = getattr(rule, name)
            if value:
                answer[name] = list(value) if isinstance(value, tuple) else value
        return json_response(request, answer)

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
                                       **signed(req, actor))
        source_row, destination_row = await ledgers(self.s.guard, tenant,
                                                    [moved.source, moved.destination])
        return json_response(request, {
            "tenant_id": tenant, "amount": wire.amount(Amount(unit, req.amount.amount)),
            "source": source_row, "destination": destination_row})

    # -- the sweep (admin key) --------------------------------------------------------------

    async def sweep(self, request: Request) -> Response:
        """Expire up to `limit` overdue reservations now, across tenants."""
        require_admin(self.s, request)
        raw = await body(request, self.s.max_body)
        limit = wire.parse(SweepBody, raw).limit if raw else SweepBody().limit
        expired = await self.s.guard.asweep(limit=limit)
        return json_response(request, {"expired": expired, "limit": limit})
