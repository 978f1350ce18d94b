"""Who a credential is and what it may do, as the reference's auth routes answer it:
`GET /v1/auth/introspect` (the caller's own credential, admin key or tenant key) and
`POST /v1/auth/validate` (the admin key asks about a tenant key's secret). Both only read."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from starlette.requests import Request

from ..keys import KeyCheck, permits
from ..models import ApiKey
from . import wire
from .auth import TENANT_HEADER, admin_key
from .context import set_tenant
from .errors import unauthorized
from .runtime import Settings
from .shapes import NO_EXPIRY, iso

ADMIN_PAGES = ("view_overview", "view_tenants", "view_api_keys")
"""Capabilities of the admin key alone: this server serves those pages to no tenant key."""
TENANT_PAGES = {"view_budgets": "budgets:read", "view_audit": "budgets:read",
                "view_events": "events:read", "view_webhooks": "webhooks:read",
                "view_policies": "policies:read"}
"""The other capabilities, each the permission a tenant key needs for it (the audit route
asks budgets:read here)."""


class ValidateBody(wire._Strict):
    key_secret: str = Field(min_length=1, max_length=1024)


def capabilities(key: ApiKey | None) -> dict[str, bool]:
    """Every capability, true or false (none left out): all of them for the admin key
    (`key` None), else those the key's permissions grant."""
    granted = {page: key is None for page in ADMIN_PAGES}
    for page, permission in TENANT_PAGES.items():
        granted[page] = key is None or permits(key, permission)
    return granted


def introspection(key: ApiKey | None) -> dict[str, Any]:
    """An AuthIntrospectResponse: the admin key's (`key` None, permissions `["*"]`) or a
    tenant key's, which also names its tenant and key id."""
    if key is None:
        return {"authenticated": True, "auth_type": "admin", "permissions": ["*"],
                "capabilities": capabilities(None)}
    return {"authenticated": True, "auth_type": "api_key", "tenant_id": key.tenant,
            "key_id": key.key_id, "permissions": list(key.permissions),
            "capabilities": capabilities(key)}


def validation(check: KeyCheck) -> dict[str, Any]:
    """An ApiKeyValidationResponse. `tenant_id` is required: empty when the secret is no
    key's; `reason` says why an invalid one is (KEY_NOT_FOUND, INVALID_KEY, KEY_REVOKED,
    KEY_EXPIRED)."""
    key = check.key
    if key is None:
        return {"valid": False, "tenant_id": "", "reason": check.refusal}
    answer: dict[str, Any] = {
        "valid": check.refusal is None, "tenant_id": key.tenant, "key_id": key.key_id,
        "permissions": list(key.permissions), "expires_at": iso(key.expires_at_ms) or NO_EXPIRY}
    if check.refusal is not None:
        answer["reason"] = check.refusal
    return answer


async def credential(settings: Settings, request: Request) -> ApiKey | None:
    """The caller's credential: None for the admin key, else its live tenant key whatever
    its permissions (its tenant named in the answer); anything else is 401."""
    if admin_key(settings.admin_key, request):
        return None
    secret = request.headers.get(TENANT_HEADER)
    if not secret:
        raise unauthorized("this call needs the X-Admin-API-Key or X-Cycles-API-Key header")
    check = await settings.guard.avalidate_key(secret)
    if check.key is None or check.refusal is not None:
        raise unauthorized("unknown, revoked or expired API key")
    set_tenant(request, check.key.tenant)
    return check.key
