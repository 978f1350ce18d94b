"""The embedded store: all state in one process, every operation one function run under one
lock, so a reservation evaluates access rules, quotas and every ledger, and then charges all of
them, in one step (as the Redis store does in one script call). Every check runs before the
first write, and the audit record of a change is written in the same step as the change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ...clock import system_ms
from ...events import Notification
from ...models import TenantClosure
from ...reports import REPORT_RETENTION_DAYS, check_retention
from ..hooks import HOOK_OPS, SubscribeWebhook, UpdateWebhook
from ..operations import (
    ONCE_OPS,
    ApplyPlan,
    Audit,
    Balances,
    CloseTenant,
    Commit,
    CreateKey,
    Extend,
    FindKey,
    Fund,
    Gated,
    Get,
    GetTenant,
    ListKeys,
    ListReservations,
    Op,
    PlanOf,
    Record,
    RegisterTenant,
    Release,
    RemoveBudget,
    Report,
    Reserve,
    RevokeKey,
    SetAccess,
    SetBudget,
    SetBudgetTerms,
    SetMode,
    SetQuota,
    SetStatus,
    StatusOf,
    SuspendTenant,
    Sweep,
    Tenants,
    Transfer,
    UpdateKey,
    Usage,
)
from .admin import (
    close_tenant,
    fund,
    set_budget_terms,
    set_mode,
    set_status,
    suspend_tenant,
    transfer,
)
from .definitions import apply_plan, remove_budget, set_access, set_budget, set_quota
from .keys import (
    check_key,
    create_key,
    find_key,
    get_tenant,
    list_keys,
    register_tenant,
    revoke_key,
    update_key,
)
from .once import Claims
from .outbox import Outbox
from .read import (
    audit,
    balances,
    get,
    list_reservations,
    plan_of,
    report,
    status_of,
    tenants,
    usage,
)
from .record import record
from .reserve import reserve
from .schedule import Schedule
from .settle import commit, extend, release
from .state import DAY_MS, Context, Tenant, refuse_closed
from .sweep import TENANTS_PER_STEP, SweepPart, reap, sweep, sweep_part

R = TypeVar("R")

_ON_TENANT: dict[type[Any], Callable[[Tenant, Any, int], Any]] = {
    SetBudget: set_budget, RemoveBudget: remove_budget, SetQuota: set_quota,
    SetAccess: set_access, ApplyPlan: apply_plan, SetMode: set_mode, SetStatus: set_status,
    SetBudgetTerms: set_budget_terms, SuspendTenant: suspend_tenant,
    Fund: fund, Transfer: transfer, Reserve: reserve, Commit: commit, Release: release,
    Extend: extend, Record: record, Get: get, Balances: balances, Audit: audit, Report: report,
    CreateKey: create_key, ListKeys: list_keys, RevokeKey: revoke_key, FindKey: find_key,
    RegisterTenant: register_tenant, GetTenant: get_tenant, UpdateKey: update_key,
    ListReservations: list_reservations,
    PlanOf: plan_of, StatusOf: status_of, Usage: usage,
}
"""The operations on one tenant's state, by type (and `CloseTenant`, see `_close`)."""
_CLOSED_REFUSES = frozenset({
    SetBudget, RemoveBudget, SetQuota, SetAccess, ApplyPlan, SetMode, SetStatus,
    SetBudgetTerms, SuspendTenant, Fund, Transfer, CreateKey, UpdateKey, SubscribeWebhook,
    UpdateWebhook})
"""The changes a closed tenant refuses outright; its reserve, commit, release, extend and
record answer a replay first, then refuse (see `admin.close_tenant`)."""
_ACROSS_TENANTS: dict[type[Any], Callable[[Iterable[Tenant], Any, int], Any]] = {
    Sweep: sweep, SweepPart: sweep_part, Tenants: tenants,
}
"""The operations that walk every tenant, by type."""


def _writes_nothing(op: Op[Any]) -> bool:
    """Decide and key lookups (unauthenticated input) write nothing: not even a tenant, nor
    the expiry of its overdue reservations."""
    return (type(op) is Reserve and op.dry_run) or type(op) in (FindKey, GetTenant)


class MemoryStore:
    """Thread-safe in-process store; `clock` returns integer milliseconds and may be moved."""

    def __init__(self, clock: Callable[[], int] = system_ms, *, reap_batch: int = 16,
                 idempotency_ttl_ms: int = DAY_MS, finished_retention_ms: int = DAY_MS,
                 dimension_idle_ttl_ms: int = 30 * DAY_MS, audit_retention: int = 10_000,
                 report_retention_days: int = REPORT_RETENTION_DAYS) -> None:
        self.clock = clock
        self._cx = Context(idempotency_ttl_ms, finished_retention_ms, dimension_idle_ttl_ms,
                           audit_retention, reap_batch, check_retention(report_retention_days))
        self._lock = threading.Lock()
        self._tenants: dict[str, Tenant] = {}
        self._listeners: list[Callable[[list[Notification]], None]] = []
        self._outbox = Outbox(self._cx, self._owned)
        self._claims = Claims()
        self._now = 0  # the time of the step under way
        self._schedule = Schedule(self._tenants)
        """The tenants the next sweep looks at: touched since the last, or due."""

    def _owned(self, name: str) -> Tenant:
        """A tenant's state, made (and put on the sweep's schedule) by its first change."""
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = Tenant(name, self._cx)
            self._schedule.touch(tenant)
        return tenant

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """One process holds all of this store: its sweeper never competes."""
        return True

    def subscribe(self, listener: Callable[[list[Notification]], None]) -> None:
        """Called with each operation's notifications, after the lock is released."""
        self._listeners.append(listener)

    def execute(self, op: Op[R]) -> R:
        """Run one operation as one step; a tenant's overdue reservations expire first
        (a dry run answers as if they had, and changes nothing). A sweep runs in steps of
        a few tenants (`SweepPart`)."""
        if type(op) is Sweep:
            return self._sweep(op)  # type: ignore[return-value]
        cx = self._cx
        error: BaseException | None = None
        lock = self._lock
        lock.acquire()  # not `with`: its two bound methods cost more than the step's lookups
        try:
            try:
                now = self._now = self.clock()
                run = _ON_TENANT.get(type(op))
                tenant = None if run is None else self._tenants.get(op.tenant)
                if (run is not None and tenant is not None and tenant.closed_at_ms is None
                        and not (tenant.expiry and tenant.expiry[0][0] < now)):
                    if not tenant.touched:
                        self._schedule.touch(tenant)
                    result: R = run(tenant, op, now)  # the usual step: a tenant, none due
                else:
                    result = self._step(op, cx, now)
            except BaseException as raised:  # a refused step may have expired reservations
                error = raised  # first: those are still notified
            notes = cx.notes
            if notes:
                cx.notes = []
                if self._outbox.active:  # in the same step: a crash loses no event
                    self._outbox.append(notes, self._now)
        finally:
            lock.release()
        if notes:
            for listener in self._listeners:
                listener(notes)
        if error is not None:
            raise error
        return result

    def _step(self, op: Op[R], cx: Context, now: int) -> R:
        """The operation's step, under the lock (its notifications are left in `cx`)."""
        if isinstance(op, Gated):  # the key first, before the operation reaps or writes
            check_key(self._tenants.get(op.tenant), op.proof, now)
            gated: R = self._step(op.op, cx, now)
            return gated
        kind = type(op)
        run: Callable[[Tenant, Any, int], Any] | None = (
            self._close if kind is CloseTenant else _ON_TENANT.get(kind))
        tenant = self._tenants.get(op.tenant)
        if tenant is not None and tenant.closed_at_ms is not None and kind in _CLOSED_REFUSES:
            refuse_closed(tenant)
        if run is None:
            across = _ACROSS_TENANTS.get(kind)
            if across is None and kind in HOOK_OPS:
                result: R = self._outbox.execute(op, now, self._tenants)
                return result
            if across is None and kind in ONCE_OPS:
                return self._claims.execute(op, now)  # type: ignore[arg-type,return-value]
            return _ACROSS_TENANTS[kind](self._tenants.values(), op, now)  # type: ignore[no-any-return]
        if tenant is not None:
            if not tenant.touched:
                self._schedule.touch(tenant)
            expiry = tenant.expiry
            if expiry and expiry[0][0] < now and not _writes_nothing(op):
                reap(tenant, now, cx.reap_batch)
            return run(tenant, op, now)  # type: ignore[no-any-return]
        tenant = Tenant(op.tenant, cx) if _writes_nothing(op) else self._owned(op.tenant)
        return run(tenant, op, now)  # type: ignore[no-any-return]

    def _close(self, tenant: Tenant, op: CloseTenant, now: int) -> TenantClosure:
        """Close a tenant, its own webhooks with it, in the step under way."""
        closure = close_tenant(tenant, op, now)
        if closure.changed:
            closure.webhooks_disabled = self._outbox.close(op.tenant)
        return closure

    def _sweep(self, op: Sweep) -> int:
        """The tenants an operation touched since the last sweep began and those whose next
        work is due (`Schedule`), `TENANTS_PER_STEP` per step, until `op.limit` reservations
        have expired (each tenant is pruned either way, and put back on the schedule in its
        step). A sweep cut short leaves the tenants it did not get to to the next one."""
        with self._lock:
            every = self._schedule.take(self.clock())
        expired, done = 0, 0
        try:
            for at in range(0, len(every), TENANTS_PER_STEP):
                part = every[at:at + TENANTS_PER_STEP]
                expired += self.execute(SweepPart(op.tenant, op.limit - expired, part,
                                                  self._schedule))
                done = at + len(part)
                time.sleep(0)  # let a thread waiting for the lock have it before the next step
        finally:
            if done < len(every):
                with self._lock:
                    self._schedule.give_back(every[done:])
        return expired

    async def aexecute(self, op: Op[R]) -> R:
        """The same step: the lock is held for microseconds and never across an await, so
        calling through is cheaper than a hop to a thread and keeps one event loop's
        operations in order."""
        return self.execute(op)

    def close(self) -> None:
        """Nothing to let go of."""
