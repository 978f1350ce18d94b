"""The tenants of the reference admin plane beyond creation: the list, and `PATCH` of a
tenant's status (admin key). SUSPENDED is every open budget of the tenant frozen, in one
store step (`Guard.suspend_tenant`) and ACTIVE is them unfrozen (`Guard.resume_tenant`);
budgets closed one by one stay closed. CLOSED is `Guard.close_tenant`, for good,
with its cascade in one store step (reservations released, budgets closed, keys revoked,
webhooks disabled). What the guard cannot change (a new name, the tenant's reservation
defaults) is refused, never silently dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import NotFound
from ..guard import Guard
from ..models import TenantInfo, TenantStatus
from ..scopes import tenant_name
from . import paging, wire
from .admin import require_admin, search_text, tenant_view
from .auth import ADMIN_ACTOR
from .context import body, json_response
from .errors import ApiError, bad_request, not_found
from .runtime import Settings

_UNCHANGEABLE = ("metadata", "default_commit_overage_policy", "default_reservation_ttl_ms",
                 "max_reservation_ttl_ms", "max_reservation_extensions")


class TenantPatch(wire._Strict):
    """The reference's tenant update body."""

    name: str | None = Field(None, min_length=1, max_length=256)
    status: Literal["ACTIVE", "SUSPENDED", "CLOSED"] | None = None
    metadata: wire.Metadata | None = None
    default_commit_overage_policy: wire.PolicyName | None = None
    default_reservation_ttl_ms: int | None = Field(None, ge=1_000, le=86_400_000)
    max_reservation_ttl_ms: int | None = Field(None, ge=1_000, le=86_400_000)
    max_reservation_extensions: int | None = Field(None, ge=0)


class Tenancy:
    """Tenant list and status over one guard."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/tenants", self.list_tenants, methods=["GET"]),
            Route("/v1/admin/tenants/{tenant_id}", self.patch, methods=["PATCH"]),
        ]

    async def list_tenants(self, request: Request) -> Response:
        """Every tenant the store holds, by name. One made by the library without a record
        (no `POST /v1/admin/tenants`) is listed under its id (see `shapes.tenant_view`).
        Paged by `limit` and `cursor` in the order of their ids, as the key and budget lists
        are (`paging.py`)."""
        require_admin(self.s, request)
        query = request.query_params
        asked = paging.window(query)
        status, search = query.get("status"), search_text(query)
        if status is not None and status not in ("ACTIVE", "SUSPENDED", "CLOSED"):
            raise bad_request(f"status: {status!r} is not ACTIVE, SUSPENDED or CLOSED")
        guard = self.s.guard
        if status is None and search is None:  # a page of names first: read only its rows
            names, more = paging.paged(await guard.atenants(), lambda name: [name], asked)
            rows = await tenant_rows(guard, None, names)
        else:
            rows, more = paging.paged(
                [row for row in await tenant_rows(guard, search) if status in (None, row[2])],
                lambda row: [row[0]], asked)
        return json_response(request, {"tenants": [tenant_view(info, name, state)
                                                   for name, info, state in rows], **more})

    async def patch(self, request: Request) -> Response:
        require_admin(self.s, request)
        tenant = tenant_name(request.path_params["tenant_id"], "tenant_id")
        req = wire.parse(TenantPatch, await body(request, self.s.max_body))
        info = await self.s.guard.atenant_info(tenant)
        if info is None and tenant not in await self.s.guard.atenants():
            raise not_found(f"no tenant {tenant!r}")  # as GET: a record, or state held
        given = req.model_dump(exclude_none=True)
        refused = [field for field in _UNCHANGEABLE if field in given]
        if refused:
            raise bad_request(f"{', '.join(refused)}: cannot be changed here (the guard's "
                              "own reservation settings apply to every tenant); send name "
                              "and status only")
        named = tenant if info is None else info.name
        if req.name is not None and req.name != named:
            raise bad_request(f"name: a tenant keeps the name it was registered with "
                              f"({named!r})")
        if req.status == "CLOSED":  # for good; closed already: answered as it is
            info = (await self.s.guard.aclose_tenant(tenant, actor=ADMIN_ACTOR,
                                                     reason="tenant closed")).info
        elif req.status is not None:
            if info is not None and info.closed_at_ms is not None:
                raise ApiError(409, "TENANT_CLOSED", f"tenant {tenant} is closed for good: "
                               "it cannot be made ACTIVE or SUSPENDED again")
            await set_frozen(self.s.guard, tenant, req.status == "SUSPENDED")
        state = await self.s.guard.atenant_status(tenant)
        return json_response(request, tenant_view(info, tenant, state))


TenantRow = tuple[str, TenantInfo | None, TenantStatus]
"""A tenant's name, its record (None: made by the library without one) and its status."""


async def tenant_rows(guard: Guard, search: str | None,
                      names: Sequence[str] | None = None) -> list[TenantRow]:
    """The tenants the store holds (or those of `names`), by name, whose id or name holds
    `search` (lower case; None: all), with their status (`Guard.tenant_status`, read only
    for those)."""
    rows = []
    for name in await guard.atenants() if names is None else names:
        info = await guard.atenant_info(name)
        if search is None or search in f"{name}\n{info.name if info else ''}".lower():
            rows.append((name, info, await guard.atenant_status(name)))
    return rows


async def set_frozen(guard: Guard, tenant: str, frozen: bool, reason: str | None = None
                     ) -> None:
    """Suspend a tenant (`Guard.suspend_tenant`: every open budget frozen in one step) or
    resume it; 409 when it has no open budget."""
    call = guard.asuspend_tenant if frozen else guard.aresume_tenant
    try:
        await call(tenant, actor=ADMIN_ACTOR,
                   reason=reason or ("tenant suspended" if frozen else "tenant resumed"))
    except NotFound as error:
        raise ApiError(409, "INVALID_REQUEST", str(error)) from None
