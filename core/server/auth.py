"""Who is calling: a tenant key (`X-Cycles-API-Key`, bound to one tenant, with permissions)
or the bootstrap admin key (`X-Admin-API-Key`). A request runs through the tenant handle of
its key, so the guard itself refuses anything outside that tenant."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import Request

from ..guard import Guard
from ..keys import permits
from ..models import ApiKey
from ..tenant import TenantGuard
from .context import set_tenant
from .errors import forbidden, unauthorized

TENANT_HEADER = "x-cycles-api-key"
ADMIN_HEADER = "x-admin-api-key"


@dataclass(frozen=True)
class Caller:
    """An authenticated tenant key and the handle it may use."""

    key: ApiKey
    tenant: TenantGuard


async def tenant_key(guard: Guard, request: Request, permission: str) -> Caller:
    """The caller's live tenant key, holding `permission`; else 401 (no live key) or 403."""
    secret = request.headers.get(TENANT_HEADER)
    if not secret:
        raise unauthorized(f"missing {TENANT_HEADER.title()} header")
    key = await guard.aauthenticate_key(secret)
    if key is None:
        raise unauthorized("unknown, revoked or expired API key")
    if not permits(key, permission):
        raise forbidden(f"this API key lacks the {permission} permission")
    set_tenant(request, key.tenant)
    return Caller(key, guard.tenant(key.tenant))


def admin_key(admin: str | None, request: Request) -> bool:
    """True when the request carries the admin key; a wrong one is 401. Without a
    configured admin key there is no admin plane, and the header is refused."""
    given = request.headers.get(ADMIN_HEADER)
    if given is None:
        return False
    if admin is None or not hmac.compare_digest(given.encode(), admin.encode()):
        raise unauthorized("invalid admin API key")
    return True
