"""API keys bound to tenants: create, list, update, revoke, validate and authenticate.

A key's secret is `alk_<key id>.<43 random URL-safe characters>` (256 bits from `secrets`),
shown once when created; the store keeps only its SHA-256, which is enough for a secret of
that entropy (no password stretching is needed: nothing about it can be guessed). The key
id (`<tenant>:<32 hex digits>`) names the tenant, so authentication reads one tenant's keys
and never the keyspace; the hashes are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .calls import Flow, Runner, flow_twins, twins
from .errors import InvalidRequest, KeyRefused
from .ids import id_tenant, new_id
from .models import ApiKey
from .scopes import tenant_name
from .stores import operations as ops
from .tenant import TenantGuard, keyed_handle
from .validation import check_int, check_list, check_text, shown

PREFIX = "alk_"
PERMISSIONS = frozenset({
    "reservations:create", "reservations:commit", "reservations:release",
    "reservations:extend", "reservations:list", "balances:read", "budgets:read",
    "budgets:write", "policies:read", "policies:write", "webhooks:read", "webhooks:write",
    "events:read", "admin:read", "admin:write"})
"""The Cycles permission names. `admin:read` grants every `*:read`, `admin:write`
everything."""
RUNTIME = ("reservations:create", "reservations:commit", "reservations:release",
           "reservations:extend", "reservations:list", "balances:read")
"""What a key may do unless told otherwise: the runtime plane of its own tenant."""


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What a secret amounts to: its key (when the secret is the key's own) and why it does
    not authenticate, None when it does: KEY_NOT_FOUND (no such key, or text not shaped
    like a secret), INVALID_KEY (another secret), KEY_REVOKED or KEY_EXPIRED."""

    key: ApiKey | None
    refusal: str | None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just created: `secret` is shown this once and never kept."""

    key: ApiKey
    secret: str


def permits(key: ApiKey, permission: str) -> bool:
    """Whether `key` grants `permission` (directly, or through admin:read / admin:write)."""
    return ops.grants(key.permissions, permission)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _permission(value: Any, field: str) -> str:
    if not isinstance(value, str) or value not in PERMISSIONS:
        raise InvalidRequest(f"{field}: {shown(value)} is not a permission; use "
                             + ", ".join(sorted(PERMISSIONS)))
    return str(value)


def _expiry(expires: int | datetime | None) -> int | None:
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise InvalidRequest("expires: give an aware datetime (with tzinfo) or epoch ms")
        return int(expires.timestamp() * 1000)
    return None if expires is None else check_int(expires, "expires")


def _key_id(secret: object) -> str | None:
    """The key id a secret names, or None when it is not shaped like one of ours."""
    if not isinstance(secret, str) or not secret.startswith(PREFIX) or len(secret) > 400:
        return None
    key_id, dot, token = secret[len(PREFIX):].rpartition(".")
    if not dot or len(token) != 43:
        return None
    try:
        id_tenant(key_id)
    except InvalidRequest:
        return None
    return key_id


def keys_op(tenant: str) -> ops.ListKeys:
    """Every key of `tenant`, revoked and expired ones included, oldest first."""
    return ops.ListKeys(tenant=tenant_name(tenant))


def revoke_key_op(key_id: str) -> ops.RevokeKey:
    """Revoke a key for good; it never authenticates again. Returns the key."""
    return ops.RevokeKey(tenant=id_tenant(key_id), key_id=key_id)


def update_key_op(key_id: str, *, name: str | None = None,
                  permissions: Any = None) -> ops.UpdateKey:
    """Rename a key or replace its permissions (None: keep), without a new secret. Returns
    the key and whether it changed: a revoked or expired key never does."""
    if name is None and permissions is None:
        raise InvalidRequest("update_key: give name=, permissions= or both")
    return ops.UpdateKey(
        tenant=id_tenant(key_id), key_id=key_id,
        name=None if name is None else check_text(name, "name", 128, printable=True),
        permissions=None if permissions is None else _permissions(permissions))


def _permissions(value: Any) -> tuple[str, ...]:
    """Permission names, at least one, each once and sorted (as keys keep them)."""
    granted = check_list(value, "permissions", len(PERMISSIONS), _permission,
                         '["reservations:create", "balances:read"]')
    if not granted:
        raise InvalidRequest("permissions: give at least one permission")
    return tuple(sorted(set(granted)))


def register_tenant_op(tenant: str, name: str) -> ops.RegisterTenant:
    """Record `tenant` with a display name, unless it has a record already. Returns the
    record and whether this call made it (a second call with another name changes
    nothing: compare the names)."""
    return ops.RegisterTenant(tenant=tenant_name(tenant),
                              name=check_text(name, "name", 256, printable=True))


def tenant_info_op(tenant: str) -> ops.GetTenant:
    """The tenant's record, or None if it was never registered."""
    return ops.GetTenant(tenant=tenant_name(tenant))


class KeyCalls(Runner):
    """The platform operator's calls on API keys and tenant records (a tenant handle does
    not offer them)."""

    def _create_key(self, tenant: str, *, permissions: Any = RUNTIME,
                    expires: int | datetime | None = None,
                    name: str = "default") -> Flow[NewKey]:
        """A new key bound to `tenant` with `permissions` (Cycles names, default: the
        runtime plane), valid until `expires` (epoch ms or an aware datetime; None: no
        expiry). The secret in the answer is shown once: only its hash is stored."""
        owner = tenant_name(tenant)
        granted = _permissions(permissions)
        key_id = new_id(owner)
        secret = f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        key: ApiKey = yield ops.CreateKey(
            tenant=owner, key_id=key_id, name=check_text(name, "name", 128, printable=True),
            permissions=granted, expires_at_ms=_expiry(expires),
            secret_hash=secret_hash(secret))
        return NewKey(key, secret)

    create_key, acreate_key = flow_twins(_create_key)
    keys, akeys = twins(keys_op)
    register_tenant, aregister_tenant = twins(register_tenant_op)
    tenant_info, atenant_info = twins(tenant_info_op)
    revoke_key, arevoke_key = twins(revoke_key_op)
    update_key, aupdate_key = twins(update_key_op)

    def _validate_key(self, secret: str) -> Flow[KeyCheck]:
        """Whether `secret` authenticates now (by the store's clock), and if not, why."""
        key_id = _key_id(secret)
        if key_id is None:
            return KeyCheck(None, "KEY_NOT_FOUND")
        match: ops.KeyMatch | None = yield ops.FindKey(tenant=id_tenant(key_id), key_id=key_id)
        if match is None:
            return KeyCheck(None, "KEY_NOT_FOUND")
        if not hmac.compare_digest(match.secret_hash, secret_hash(secret)):
            return KeyCheck(None, "INVALID_KEY")
        key = match.key
        if key.revoked:
            return KeyCheck(key, "KEY_REVOKED")
        return KeyCheck(key, None if key.active(match.now_ms) else "KEY_EXPIRED")

    validate_key, avalidate_key = flow_twins(_validate_key)

    def _authenticate_key(self, secret: str) -> Flow[ApiKey | None]:
        """The key a secret belongs to if it is live (not revoked, not expired by the
        store's clock); None for anything else, malformed text included."""
        check: KeyCheck = yield from self._validate_key(secret)
        return check.key if check.refusal is None else None

    authenticate_key, aauthenticate_key = flow_twins(_authenticate_key)

    def tenant_for_key(self, secret: str, permission: str) -> TenantGuard:
        """The handle of the tenant `secret` names, whose every operation carries the key:
        the store runs it only if the key is live, the secret is its own and it holds
        `permission`, checked in the operation's own atomic step (no lookup before it, and a
        revocation holds from the next operation on, on every process). A refused operation
        raises `KeyRefused` and changes nothing. Touches no store: a malformed secret or an
        unknown permission raises here (`KeyRefused` "malformed", `InvalidRequest`)."""
        key_id = _key_id(secret)
        if key_id is None:
            raise KeyRefused("malformed")
        proof = ops.KeyProof(key_id, secret_hash(secret), _permission(permission,
                                                                      "permission"))
        return keyed_handle(self._engine, id_tenant(key_id), proof)
