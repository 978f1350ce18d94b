"""Which tenants a sweep of the embedded store looks at: those an operation touched since the
last sweep began, and those whose next deferred work is due (`next_due`), so idle tenants
cost a sweep nothing. The Redis store has no such index (its tenants live in different
slots of a cluster): its sweep reads, a page of the registry at a time, whether each has
anything due (`codec.sweep_due`)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from ...periods import bucket_end_ms
from .state import Tenant

_SLACK = 1_024
"""Stale entries the heap may hold beyond twice its live ones before it is compacted."""


def next_due(t: Tenant, now: int) -> int | None:
    """When a sweep next has work on `t`, if no operation touches it first (None: not
    before one does), as each condition in `sweep.reap` and `sweep._prune` reads at `now`:
    a reservation past its deadline, a finished one past its retention, a keyed answer
    lapsed, the next look for idle dimension ledgers, a quota window closed."""
    times = []
    if t.expiry:
        times.append(t.expiry[0][0] + 1)
    if t.finished:
        times.append(t.finished[0][0] + t.cx.finished_retention_ms + 1)
    if t.idempotency:
        times.append(next(iter(t.idempotency.values())).expires_at_ms + 1)
    if t.ledgers and any(d.per is not None for by_key in t.definitions.values()
                         for d in by_key.values()):  # a template's ledgers may go idle
        times.append(t.idle_walk_ms)
    times += [bucket_end_ms(window[0][2], now) for window in (*t.calls, *t.runs)
              if window[0][2] is not None]
    return min(times, default=None)


class Schedule:
    """The touched tenants (each once: `Tenant.touched`) and a heap of (when, tenant) of
    their next work. A tenant's live entry is the one at its `sweep_at`; an earlier time
    pushed for it leaves the later entry stale, skipped when it comes up. Used under the
    store's lock."""

    def __init__(self, tenants: Mapping[str, Tenant]) -> None:
        self._tenants = tenants  # the store's, by name
        self.touched: list[Tenant] = []
        self._heap: list[tuple[int, str]] = []
        self._live = 0  # tenants with a `sweep_at`

    def __len__(self) -> int:
        """Entries on the heap, stale ones included (at most twice the live ones, and a
        little)."""
        return len(self._heap)

    def names(self) -> set[str]:
        """The tenants on the heap."""
        return {name for when, name in self._heap if self._tenants[name].sweep_at == when}

    def touch(self, t: Tenant) -> None:
        """An operation ran on `t`: the next sweep looks at it."""
        t.touched = True
        self.touched.append(t)

    def take(self, now: int) -> tuple[Tenant, ...]:
        """The tenants a sweep at `now` looks at (touched, or due), each once, taken off
        the list and the heap."""
        touched, self.touched = self.touched, []
        for t in touched:
            t.touched = False
        due, heap = [], self._heap
        while heap and heap[0][0] <= now:
            when, name = heapq.heappop(heap)
            t = self._tenants[name]
            if t.sweep_at == when:
                t.sweep_at = None
                self._live -= 1
                due.append(t)
        return tuple({id(t): t for t in (*touched, *due)}.values())

    def plan(self, t: Tenant, now: int) -> None:
        """Put `t`, just swept at `now`, on the heap for its next work, unless it is there
        earlier; a tenant whose state cannot say is looked at by the next sweep."""
        try:
            due = next_due(t, now)
        except Exception:  # its sweep reported it (`sweep.tenant_failed`)
            due = now
        if due is None or (t.sweep_at is not None and t.sweep_at <= due):
            return
        if t.sweep_at is None:
            self._live += 1
        t.sweep_at = due
        heapq.heappush(self._heap, (due, t.name))
        if len(self._heap) > 2 * self._live + _SLACK:
            self._compact()

    def give_back(self, tenants: Sequence[Tenant]) -> None:
        """Tenants a sweep took and did not get to (it was cut short): the next one looks
        at them."""
        for t in tenants:
            if not t.touched:
                self.touch(t)

    def _compact(self) -> None:
        """Only the live entries, each once."""
        self._heap = [(when, name) for when, name in set(self._heap)
                      if self._tenants[name].sweep_at == when]
        heapq.heapify(self._heap)


__all__ = ["Schedule", "next_due"]
