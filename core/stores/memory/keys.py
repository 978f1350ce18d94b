"""API keys of one tenant, as keys.lua: each kept with the hash of its secret (never the
secret). Authentication reads a key by id; the hashes are compared outside the store, except
for a keyed operation's proof, checked in the operation's own step (`check_key`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import InvalidRequest, NotFound
from ...events import AuditType
from ...models import ApiKey, TenantInfo
from ..operations import (
    CreateKey,
    FindKey,
    GetTenant,
    KeyMatch,
    KeyProof,
    ListKeys,
    RegisterTenant,
    RevokeKey,
    UpdateKey,
    key_refusal,
)
from .state import Tenant, log, record_of


def create_key(t: Tenant, op: CreateKey, now: int) -> ApiKey:
    """Store a new key; an id already taken is refused (ids are random: it never is)."""
    if op.key_id in t.api_keys:
        raise InvalidRequest(f"key {op.key_id} exists already")
    key = ApiKey(op.key_id, t.name, op.name, op.permissions, now, op.expires_at_ms, False)
    t.api_keys[op.key_id] = (key, op.secret_hash)
    detail: dict[str, Any] = {"key_id": op.key_id, "name": op.name,
                              "permissions": list(op.permissions)}
    if op.expires_at_ms is not None:
        detail["expires_at_ms"] = op.expires_at_ms
    log(t, now, AuditType.KEY_CREATED, detail=detail)  # as keys.lua: never the hash
    return replace(key)


def list_keys(t: Tenant, op: ListKeys, now: int) -> tuple[ApiKey, ...]:
    """Every key of the tenant, oldest first (ties by id)."""
    keys = sorted((key for key, _ in t.api_keys.values()),
                  key=lambda key: (key.created_at_ms, key.key_id))
    return tuple(replace(key) for key in keys)


def revoke_key(t: Tenant, op: RevokeKey, now: int) -> ApiKey:
    """Mark the key revoked; it never authenticates again."""
    found = t.api_keys.get(op.key_id)
    if found is None:
        raise NotFound(f"no key {op.key_id}")
    key: ApiKey = replace(found[0], revoked=True)
    t.api_keys[op.key_id] = (key, found[1])
    if not found[0].revoked:  # on record once
        log(t, now, AuditType.KEY_REVOKED, detail={"key_id": op.key_id})
    return replace(key)


def update_key(t: Tenant, op: UpdateKey, now: int) -> tuple[ApiKey, bool]:
    """Rename a live key or replace its permissions; a revoked or expired one stays as is."""
    found = t.api_keys.get(op.key_id)
    if found is None:
        raise NotFound(f"no key {op.key_id}")
    key = found[0]
    if not key.active(now):
        return replace(key), False
    key = replace(key, name=key.name if op.name is None else op.name,
                  permissions=key.permissions if op.permissions is None else op.permissions)
    t.api_keys[op.key_id] = (key, found[1])
    detail: dict[str, Any] = {"key_id": op.key_id}
    if op.name is not None:
        detail["name"] = op.name
    if op.permissions is not None:
        detail["permissions"] = list(op.permissions)
    log(t, now, AuditType.KEY_UPDATED, detail=detail)
    return replace(key), True


def find_key(t: Tenant, op: FindKey, now: int) -> KeyMatch | None:
    """The key and its secret's hash, with the store's time; None if there is no such key."""
    found = t.api_keys.get(op.key_id)
    if found is None:
        return None
    return KeyMatch(replace(found[0]), found[1], now)


def check_key(t: Tenant | None, proof: KeyProof, now: int) -> None:
    """Raise `KeyRefused` unless the key of `proof` lets its operation through now (`t`:
    the tenant the key id names, None when it holds nothing)."""
    refusal = key_refusal(proof, None if t is None else t.api_keys.get(proof.key_id), now)
    if refusal is not None:
        raise refusal


def register_tenant(t: Tenant, op: RegisterTenant, now: int) -> tuple[TenantInfo, bool]:
    """The tenant's record, made now if it has none."""
    if t.profile is not None:
        return record_of(t), False
    t.profile = TenantInfo(t.name, op.name, now)
    log(t, now, AuditType.TENANT_CREATED, scopes=(f"tenant:{t.name}",),
        detail={"name": op.name})
    return record_of(t), True


def get_tenant(t: Tenant, op: GetTenant, now: int) -> TenantInfo | None:
    """The tenant's record, if it was registered."""
    return None if t.profile is None else record_of(t)
