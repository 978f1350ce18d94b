"""Who is calling: a tenant key (`X-Cycles-API-Key`, bound to one tenant, with permissions)
or the bootstrap admin key (`X-Admin-API-Key`). A request runs through the tenant handle of
its key, so the guard itself refuses anything outside that tenant.

Two ways to hold a key to account. `tenant_key` looks the key up before the route runs (a
store call). `keyed_caller` makes no call: its handle carries the key into every operation,
and the store checks it in the operation's own atomic step (`Guard.tenant_for_key`), so the
hot runtime routes pay one store call per request, and a revocation still holds at once on
every worker."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from starlette.requests import Request

from ..errors import KeyRefused
from ..guard import Guard
from ..keys import permits
from ..scopes import tenant_name
from ..tenant import TenantGuard
from .context import set_tenant
from .errors import forbidden, unauthorized

TENANT_HEADER = "x-cycles-api-key"
ADMIN_HEADER = "x-admin-api-key"
ADMIN_ACTOR = "admin-key"
"""Who the records of the admin key's changes name (a tenant key's: `key:<key id>`)."""
MAX_HANDLES = 10_000
"""Tenant handles (and keyed handles) kept per guard (then the lot is dropped and rebuilt on
demand)."""
_handles: WeakKeyDictionary[Guard, dict[Any, TenantGuard]] = WeakKeyDictionary()
_keyed: WeakKeyDictionary[Guard, dict[Any, TenantGuard]] = WeakKeyDictionary()


@dataclass(frozen=True)
class Caller:
    """A tenant key (its id) and the handle it may use (`tenant.name` is its tenant)."""

    key_id: str | None
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
    return Caller(key.key_id, _handle(guard, key.tenant))


def keyed_caller(guard: Guard, request: Request, permission: str) -> Caller:
    """The caller of a route whose every answer comes from a store call through the handle:
    no lookup now, the store checks the key (`KeyRefused` -> 401/403). A route must
    re-check with `tenant_key` before answering a refusal of its own, so a bad key is a 401
    whatever else is wrong with the request (`Runtime`'s routes do)."""
    secret = request.headers.get(TENANT_HEADER)
    if not secret:
        raise unauthorized(f"missing {TENANT_HEADER.title()} header")
    handle = _keyed_handle(guard, secret, permission)
    set_tenant(request, handle.name)
    return Caller(handle.key_id, handle)


def _keyed_handle(guard: Guard, secret: str, permission: str) -> TenantGuard:
    """`guard.tenant_for_key(secret, permission)`, made once per secret and permission
    (building one parses and hashes the secret and checks the names: most of what a
    request pays before the store). A keyed handle holds what the secret says, never
    whether the key is live: the store still checks that with every operation, so reusing
    one lets nothing through. Kept by the secret's digest, not the secret."""
    def make() -> TenantGuard:
        try:
            return guard.tenant_for_key(secret, permission)
        except KeyRefused:
            raise unauthorized(KeyRefused.UNAUTHENTICATED) from None

    return _kept(_keyed, guard, (hashlib.sha256(secret.encode()).digest(), permission), make)


def _handle(guard: Guard, tenant: str) -> TenantGuard:
    """The guard's handle for `tenant`, made once: building one re-validates the name, a
    sixth of an authentication's cost. A handle is only the guard's engine and the tenant's
    name, so reusing it grants nothing the key does not (the key is checked on every
    request, never cached)."""
    return _kept(_handles, guard, tenant, lambda: guard.tenant(tenant))


def _kept(kept: WeakKeyDictionary[Guard, dict[Any, TenantGuard]], guard: Guard, token: Any,
          make: Callable[[], TenantGuard]) -> TenantGuard:
    """The handle kept for `token` on `guard`, made by `make` the first time (at most
    MAX_HANDLES per guard: then the lot is dropped and rebuilt on demand)."""
    handles = kept.get(guard)
    if handles is None:
        handles = kept[guard] = {}
    handle = handles.get(token)
    if handle is None:
        handle = make()
        if len(handles) >= MAX_HANDLES:
            handles.clear()
        handles[token] = handle
    return handle


def own_tenant(tenant: str, named: str | None, field: str) -> None:
    """A tenant key may name only its own tenant in the request's `field`: another one is
    403, before anything is read."""
    if named is not None and tenant_name(named, field) != tenant:
        raise forbidden(f"{field} is not the tenant of this API key")


def admin_key(admin: str | None, request: Request) -> bool:
    """True when the request carries the admin key; a wrong one is 401. Without a
    configured admin key there is no admin plane, and the header is refused."""
    given = request.headers.get(ADMIN_HEADER)
    if given is None:
        return False
    if admin is None or not hmac.compare_digest(given.encode(), admin.encode()):
        raise unauthorized("invalid admin API key")
    return True
