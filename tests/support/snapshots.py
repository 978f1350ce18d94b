"""Full snapshots of one tenant's state in a store, for tests that must prove a call changed
nothing: ledgers (dimension ledgers included), definitions, quotas, access rules, modes and
plans, reservations, idempotency records, audit records and report counters.

The memory store is read from its internals (a deep copy of the tenant, less its caches);
the Redis store by dumping every key of the tenant's hash tag, `al:{tenant}:*`, with a raw
client, plus the tenant's membership of the sweeper's set. A snapshot is a dict of sections,
so a check can leave out what a call may change by design (a denial is written to the audit
log and the report)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import redis

import allotment as al
from allotment.stores.memory.state import Kept

Snapshot = dict[str, Any]

AUDIT_SECTIONS = frozenset({"audit", "report"})
"""What a denial writes on purpose: its audit record and its report counters."""

_MEMORY_CACHES = frozenset({"cx", "routes", "tally_prefix"})
"""Tenant fields that only memoise: rebuilt on demand, never state."""
_MEMORY_SECTIONS = {"audit": "audit", "seq": "audit", "report": "report", "usage": "report"}
"""Memory fields by the section Redis keeps them in (usage counters live in the report hash)."""


def snapshot(store: Any, tenant: str) -> Snapshot:
    """Everything `store` keeps for `tenant`, as comparable plain values."""
    if isinstance(store, al.MemoryStore):
        return _memory(store, tenant)
    return _redis(store, tenant)


def without(snap: Snapshot, sections: frozenset[str]) -> Snapshot:
    """The snapshot less some sections (what a call may change by design)."""
    return {name: value for name, value in snap.items() if name not in sections}


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """The sections (and Redis keys) that differ, for a readable failure message."""
    changed = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted((k for k in set(old) | set(new) if old.get(k) != new.get(k)), key=repr)
            changed.append(f"{name}: {[_short(k) for k in keys][:8]}")
        else:
            changed.append(f"{name}: {_short(old)} -> {_short(new)}")
    return changed


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def _memory(store: al.MemoryStore, tenant: str) -> Snapshot:
    state = store._tenants.get(tenant)
    if state is None:
        return {}
    snap: Snapshot = {}
    for field in dataclasses.fields(state):
        if field.name in _MEMORY_CACHES:
            continue
        section = _MEMORY_SECTIONS.get(field.name, field.name)
        value = copy.deepcopy(getattr(state, field.name))
        snap.setdefault(section, {})[field.name] = _plain(value)
    return snap


def _plain(value: Any) -> Any:
    """Comparable form: dataclasses and models by their fields, containers recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if "_balances" in fields and callable(getattr(value, "_balances", None)):
            fields["_balances"] = _plain(value._balances())
        return (type(value).__name__, fields)
    if isinstance(value, functools.partial):
        return _plain(value())  # a snapshot of balances, built when read
    if isinstance(value, Kept):  # a keyed call's answer, by what a replay answers
        return ("Kept", value.key, value.fingerprint, value.expires_at_ms,
                _plain(value.answer()))
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "deque":
        return tuple(_plain(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(_plain(v) for v in value)
    if hasattr(value, "model_dump"):
        return (type(value).__name__, _plain(value.model_dump()))
    return value


_clients: dict[str, redis.Redis] = {}


def _raw(store: Any) -> redis.Redis:
    """A raw (bytes) client on the store's database."""
    url = store.url
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


def _redis(store: Any, tenant: str) -> Snapshot:
    client = _raw(store)
    prefix = f"al:{{{tenant}}}:".encode()
    keys = sorted(client.scan_iter(match=prefix + b"*", count=1000))
    types = client.pipeline(transaction=False)
    for key in keys:
        types.type(key)
    reads = client.pipeline(transaction=False)
    for key, kind in zip(keys, types.execute(), strict=True):
        if kind == b"hash":
            reads.hgetall(key)
        elif kind == b"string":
            reads.get(key)
        elif kind == b"set":
            reads.smembers(key)
        elif kind == b"zset":
            reads.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            reads.lrange(key, 0, -1)
        elif kind == b"stream":
            reads.xrange(key)
        else:
            reads.type(key)
        reads.pexpiretime(key)
    values = reads.execute()
    snap: Snapshot = {"registered": {"al:tenants": client.sismember("al:tenants", tenant)}}
    for index, key in enumerate(keys):
        name = key[len(prefix):].decode()
        section = name.split(":", 1)[0]
        value = values[2 * index]
        if isinstance(value, set):
            value = frozenset(value)
        snap.setdefault(section, {})[name] = (value, values[2 * index + 1])
    return snap
