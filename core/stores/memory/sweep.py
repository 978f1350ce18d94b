"""Maintenance, as sweep.lua and the reap of common.lua: expire reservations past their ttl
and grace, and drop what is past retention."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from ...models import ReservationStatus
from ...periods import bucket
from ..operations import Sweep
from .state import Tenant, expire


def sweep(tenants: Iterable[Tenant], op: Sweep, now: int) -> int:
    """Reap up to `op.limit` reservations across tenants and prune each; how many expired."""
    expired = 0
    for t in tenants:
        expired += reap(t, now, op.limit - expired)
        _prune(t, now)
    return expired


def reap(t: Tenant, now: int, limit: int) -> int:
    """Expire up to `limit` reservations whose ttl and grace have passed."""
    expired = 0
    while t.expiry and t.expiry[0][0] < now and expired < limit:
        _, rid = heapq.heappop(t.expiry)
        res = t.reservations.get(rid)
        if res is None or res.status is not ReservationStatus.ACTIVE:
            continue
        if res.deadline_ms >= now:
            continue  # extended since: a later entry stands in the heap
        expire(t, res, now)
        expired += 1
    return expired


def _prune(t: Tenant, now: int) -> None:
    """Drop finished reservations, idempotency records, idle dimension ledgers and quota
    windows that have closed."""
    for rid, res in list(t.reservations.items()):
        if res.finalized_at_ms is not None and (
                res.finalized_at_ms + t.cx.finished_retention_ms < now):
            del t.reservations[rid]
    for key, record in list(t.idempotency.items()):
        if record.expires_at_ms < now:
            del t.idempotency[key]
    templates = {(d.scope, d.unit, d.period) for defs in t.definitions.values()
                 for d in defs.values() if d.per is not None}
    for lkey, state in list(t.ledgers.items()):
        idle = state.touched_ms + t.cx.dimension_idle_ttl_ms < now
        base = lkey[0].rsplit("/", 1)[0]
        if idle and state.reserved == 0 and (base, lkey[1], lkey[2]) in templates:
            del t.ledgers[lkey]
    for window in [w for w in t.calls if w[1] != bucket(w[0][2], now)]:
        del t.calls[window]
    for window in [w for w in t.runs if w[1] != bucket(w[0][2], now)]:
        del t.runs[window]
