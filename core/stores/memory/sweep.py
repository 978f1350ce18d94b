"""Maintenance, as sweep.lua and the reap of common.lua: expire reservations past their ttl
and grace, and drop what is past retention."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ...events import Notification
from ...models import ReservationStatus
from ...periods import bucket
from ..operations import TENANT_FAILED, Sweep, skipped
from .schedule import Schedule
from .state import LedgerKey, QuotaKey, Reservation, Tenant, expire, relinked

TENANTS_PER_STEP = 256
"""Tenants one step of a sweep takes: the store runs a sweep in steps of this many
(`SweepPart`), so its lock is never held across every tenant (100,000 tenants took 150 ms
in one step); each tenant's reap and prune stay one step, as each is one script call on
Redis."""


@dataclass
class SweepPart(Sweep):
    """One step of a sweep: these tenants, each put back on `schedule` for its next work in
    the same step."""

    tenants: tuple[Tenant, ...] = ()
    schedule: Schedule | None = None


def sweep_part(every: Iterable[Tenant], op: SweepPart, now: int) -> int:
    """`sweep` over the part's tenants only, then each on the schedule."""
    expired = sweep(op.tenants, op, now)
    if op.schedule is not None:
        for t in op.tenants:
            op.schedule.plan(t, now)
    return expired


def sweep(tenants: Iterable[Tenant], op: Sweep, now: int) -> int:
    """Reap up to `op.limit` reservations across tenants and prune each; how many expired.
    A tenant whose state fails is reported (`sweep.tenant_failed`) and skipped."""
    expired = 0
    for t in tenants:
        try:
            expired += reap(t, now, op.limit - expired)
            _prune(t, now)
        except Exception as error:  # one tenant's bad state never stalls the others
            t.cx.notes.append(Notification(TENANT_FAILED, t.name, now,
                                           reason=skipped(t.name, error)))
    return expired


def reap(t: Tenant, now: int, limit: int) -> int:
    """Expire up to `limit` reservations whose ttl and grace have passed."""
    expired = 0
    for res in _expiring(t, now, limit, _popped(t.expiry, now)):
        expire(t, res, now)
        expired += 1
    return expired


@dataclass
class Overdue:
    """What a reap would give back, by ledger (held amounts) and by concurrency quota
    (slots): a dry run answers as if it had happened, and writes nothing."""

    held: dict[LedgerKey, int] = field(default_factory=dict)
    slots: dict[QuotaKey, int] = field(default_factory=dict)


def overdue(t: Tenant, now: int, limit: int) -> Overdue:
    """What `reap(t, now, limit)` would give back, leaving everything as it is."""
    found = Overdue()
    due = iter(sorted(entry for entry in t.expiry if entry[0] < now))
    for res in _expiring(t, now, limit, due):
        for key, _ in res.ledgers:
            found.held[key] = found.held.get(key, 0) + res.estimate[key[1]]
        for quota in res.concurrency:
            found.slots[quota] = found.slots.get(quota, 0) + 1
    return found


def _popped(expiry: list[tuple[int, str]], now: int) -> Iterator[tuple[int, str]]:
    """The due entries of the expiry heap, in order, each taken off it."""
    while expiry and expiry[0][0] < now:
        yield heapq.heappop(expiry)


def _expiring(t: Tenant, now: int, limit: int,
              due: Iterator[tuple[int, str]]) -> Iterator[Reservation]:
    """The first `limit` reservations due entries stand for that are still active and past
    their deadline (an extended one leaves an earlier entry behind: it counts once)."""
    if limit <= 0:
        return
    found, seen = 0, set()
    for _, rid in due:
        res = t.reservations.get(rid)
        if (res is None or res.status is not ReservationStatus.ACTIVE
                or res.deadline_ms >= now or rid in seen):
            continue
        seen.add(rid)
        yield res
        found += 1
        if found >= limit:
            return


def _prune(t: Tenant, now: int) -> None:
    """Drop finished reservations, idempotency records, idle dimension ledgers and quota
    windows that have closed."""
    finished, kept_since = t.finished, now - t.cx.finished_retention_ms
    while finished and finished[0][0] < kept_since:
        t.reservations.pop(finished.popleft()[1], None)
    if len(t.listing) > 2 * len(t.reservations) + 1024:  # half of it names dropped ones
        t.listing = [entry for entry in t.listing if entry[1] in t.reservations]
    lapsed = []
    for key, record in t.idempotency.items():  # in the order they lapse
        if record.expires_at_ms >= now:
            break
        lapsed.append(key)
    for key in lapsed:
        del t.idempotency[key]
    if now >= t.idle_walk_ms:  # idle ledgers are looked for at most every 1/720 of the ttl
        t.idle_walk_ms = now + t.cx.dimension_idle_ttl_ms // 720
        _drop_idle_ledgers(t, now)
    for window in [w for w in t.calls if w[1] != bucket(w[0][2], now)]:
        del t.calls[window]
    for window in [w for w in t.runs if w[1] != bucket(w[0][2], now)]:
        del t.runs[window]


def _drop_idle_ledgers(t: Tenant, now: int) -> None:
    """Drop the ledgers of dimension values (a template's) idle past their ttl and holding
    nothing. The walk allocates nothing for a ledger still in use: a tenant may keep a
    month of runs' ledgers."""
    idle_since = now - t.cx.dimension_idle_ttl_ms
    idle = [key for key, state in t.ledgers.items()
            if state.touched_ms < idle_since and state.reserved == 0]
    if idle:
        templates = {(d.scope, d.unit, d.period) for defs in t.definitions.values()
                     for d in defs.values() if d.per is not None}
        dropped = [key for key in idle if (key[0].rsplit("/", 1)[0], key[1], key[2])
                   in templates]
        for key in dropped:
            del t.ledgers[key]
        if dropped:
            relinked(t)
