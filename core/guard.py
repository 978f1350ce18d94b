"""The guard: the one object users talk to. It validates, derives scopes, and hands each
operation to its store as one atomic step. Every method has an `a`-prefixed async twin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .amounts import (
    Amount,
    AmountsLike,
    Unit,
    Units,
    amounts_by_unit,
    to_decimal,
    trusted_amounts,
    usd_to_microcents,
)
from .clock import system_ms
from .context import current_subject
from .errors import (
    BudgetExceeded,
    Denied,
    InvalidRequest,
    NotAllowed,
    QuotaExceeded,
    ReservationFinalized,
    StoreUnavailable,
)
from .events import AuditRecord, Notification, ReportRow, Sink, Subscriber, dispatch
from .ids import id_tenant, new_id
from .models import (
    Action,
    Balance,
    BudgetStatus,
    CommitResult,
    Decision,
    ExtendResult,
    FundOperation,
    FundResult,
    Outcome,
    OveragePolicy,
    Reason,
    RecordResult,
    ReleaseResult,
    ReservationInfo,
    ReservationStatus,
    TransferResult,
)
from .periods import Period, parse_period
from .plans import Plan, relative_scope
from .policy import (
    ELASTIC_LIMIT,
    AccessRule,
    Degrade,
    Elastic,
    QuotaKind,
    QuotaRule,
    glob_list,
)
from .reservation import Reservation
from .scopes import ScopePath, Subject, check_dimension_key, parse_scope
from .stores import operations as ops
from .stores import store_from_url
from .stores.operations import AUTO, PeriodChoice, Store, in_unit_order
from .sweeper import Sweeper, retry_delays
from .validation import MAX_AMOUNT, check_idempotency_key, check_int, check_name

if TYPE_CHECKING:
    from .tenant import TenantGuard

log = logging.getLogger("allotment")
NO_KEY: dict[str, Any] = {"idempotency_key": None, "fingerprint": ""}
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
SPEND_UNRECORDED = "spend.unrecorded"

TTL_RANGE = (1_000, 86_400_000)
GRACE_RANGE = (0, 60_000)


class Guard:
    """Enforces budgets for every tenant on one store (the embedded memory store by default).

    `mode="shadow"` never denies: would-be denials are recorded and spend is tracked, to size
    budgets from real traffic (a tenant's own mode, `set_mode`, takes precedence).
    `default_plan` is installed for a tenant the first time it reserves.
    """

    def __init__(self, store: Store | None = None, *, ttl_ms: int = 60_000,
                 grace_ms: int = 5_000, max_extensions: int = 10, mode: str = "enforce",
                 default_plan: Plan | None = None, sink: Sink | None = None,
                 on_store_error: str = "deny", commit_retries: int = 3) -> None:
        if store is None:
            from .stores.memory import MemoryStore

            store = MemoryStore()
        self.store = store
        self.ttl_ms = check_int(ttl_ms, "ttl_ms", *TTL_RANGE)
        self.grace_ms = check_int(grace_ms, "grace_ms", *GRACE_RANGE)
        self.max_extensions = check_int(max_extensions, "max_extensions", 0, 1_000)
        self.mode = _mode(mode, allow_none=False)
        if default_plan is not None and not isinstance(default_plan, Plan):
            raise InvalidRequest(f"default_plan: expected a Plan, got {default_plan!r}")
        self.default_plan = default_plan
        self._default_plans: dict[str, ops.ApplyPlan] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._sinks: list[Sink] = [] if sink is None else [sink]
        if on_store_error not in ("deny", "allow"):
            raise InvalidRequest(f"on_store_error: {on_store_error!r} is not 'deny' (fail "
                                 "closed) or 'allow' (fail open)")
        self.on_store_error = on_store_error
        self.commit_retries = check_int(commit_retries, "commit_retries", 0, 10)
        self.store_failures = 0
        """Calls let through (fail open) or refused (fail closed) because the store failed."""
        self._sweeper: Sweeper | None = None
        store.subscribe(self._notify)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Guard:
        """`memory://` (embedded); guard options (ttl_ms, ...) go to the guard, the rest to
        the store."""
        guard_keys = {"ttl_ms", "grace_ms", "max_extensions", "mode", "default_plan", "sink",
                      "on_store_error", "commit_retries"}
        guard_options = {k: v for k, v in options.items() if k in guard_keys}
        store_options = {k: v for k, v in options.items() if k not in guard_keys}
        return cls(store_from_url(url, **store_options), **guard_options)

    def tenant(self, name: str) -> TenantGuard:
        """A handle that can only touch `name`'s budgets, reservations and balances."""
        from .tenant import TenantGuard

        return TenantGuard(self, name)

    def close(self) -> None:
        self.stop_sweeper()
        self.store.close()

    def start_sweeper(self, interval_s: float = 1.0, batch: int = 1_000) -> None:
        """Expire abandoned reservations in the background, every `interval_s`. Across
        processes sharing a store only one sweeps at a time (it holds a lease in the store)."""
        if self._sweeper is None:
            self._sweeper = Sweeper(self, interval_s, batch)
            self._sweeper.start()

    def stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    # -- notifications --------------------------------------------------------------------

    def on(self, event_type: str, callback: Subscriber | None = None) -> Any:
        """Call `callback(notification)` for each `event_type` ("*" for all); usable as a
        decorator. A failing callback is logged and never breaks enforcement."""
        def register(fn: Subscriber) -> Subscriber:
            self._subscribers.setdefault(event_type, []).append(fn)
            return fn

        return register if callback is None else register(callback)

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def _notify(self, notifications: list[Notification]) -> None:
        dispatch(notifications, self._subscribers, self._sinks)

    # -- administration -----------------------------------------------------------------

    def set_budget(self, scope: str, *, usd: Any = None, tokens: int | None = None,
                   credits: int | None = None, amount: int | None = None,
                   unit: Unit | str | None = None, period: Period | str | None = None,
                   per: str | None = None, overdraft_limit: Any = 0,
                   overage_policy: OveragePolicy | str = OveragePolicy.ALLOW_IF_AVAILABLE,
                   degrade: Any = (), alerts: Any = None) -> tuple[Balance, ...]:
        """Create or change the budget of `scope` in one unit (and period). A change adjusts
        the current bucket's allocation by the difference and keeps what was spent.

        `degrade=[al.Degrade(below=0.2, max_tokens=1024)]` caps calls instead of denying them
        when little remains; `alerts=[0.5, 0.8, 1.0]` are the fractions used that notify.
        """
        return self.store.execute(self._set_budget_op(
            scope, usd, tokens, credits, amount, unit, period, per, overdraft_limit,
            overage_policy, degrade, alerts))

    async def aset_budget(self, scope: str, *, usd: Any = None, tokens: int | None = None,
                          credits: int | None = None, amount: int | None = None,
                          unit: Unit | str | None = None, period: Period | str | None = None,
                          per: str | None = None, overdraft_limit: Any = 0,
                          overage_policy: OveragePolicy | str = OveragePolicy.ALLOW_IF_AVAILABLE,
                          degrade: Any = (), alerts: Any = None) -> tuple[Balance, ...]:
        return await self.store.aexecute(self._set_budget_op(
            scope, usd, tokens, credits, amount, unit, period, per, overdraft_limit,
            overage_policy, degrade, alerts))

    def remove_budget(self, scope: str, unit: Unit | str, *, period: Period | str | None = None,
                      per: str | None = None) -> int:
        """Drop a budget definition (its ledgers stay readable until pruned)."""
        return self.store.execute(self._remove_budget_op(scope, unit, period, per))

    async def aremove_budget(self, scope: str, unit: Unit | str, *,
                             period: Period | str | None = None, per: str | None = None) -> int:
        return await self.store.aexecute(self._remove_budget_op(scope, unit, period, per))

    def set_quota(self, scope: str, *, calls: int | None = None, runs: int | None = None,
                  concurrent: int | None = None, window: Period | str | None = None,
                  action_kind: str = "*") -> None:
        """One quota under `scope`: `calls` or `runs` (distinct run ids first seen) per
        tumbling UTC `window`, or `concurrent` active reservations. `action_kind` (a glob,
        e.g. "tool.*") limits it to some actions. Setting the same quota again replaces it."""
        self.store.execute(self._quota_op(scope, calls, runs, concurrent, window, action_kind,
                                          remove=False))

    async def aset_quota(self, scope: str, *, calls: int | None = None, runs: int | None = None,
                         concurrent: int | None = None, window: Period | str | None = None,
                         action_kind: str = "*") -> None:
        await self.store.aexecute(self._quota_op(scope, calls, runs, concurrent, window,
                                                 action_kind, remove=False))

    def remove_quota(self, scope: str, kind: str, *, window: Period | str | None = None,
                     action_kind: str = "*") -> None:
        """Drop the quota of `kind` ("calls", "runs" or "concurrent") with that window."""
        self.store.execute(self._quota_op(scope, *_quota_kind(kind), window, action_kind,
                                          remove=True))

    def set_access(self, scope: str, *, models_allow: Any = None, models_deny: Any = None,
                   tools_allow: Any = None, tools_deny: Any = None,
                   max_tokens_per_call: int | None = None) -> None:
        """The access rules of `scope` (replacing any before): globs on the model or tool
        name (`gpt-4o*` matches `openai:gpt-4o-mini`) and a per-call output token cap."""
        self.store.execute(self._access_op(scope, models_allow, models_deny, tools_allow,
                                           tools_deny, max_tokens_per_call))

    async def aset_access(self, scope: str, *, models_allow: Any = None,
                          models_deny: Any = None, tools_allow: Any = None,
                          tools_deny: Any = None, max_tokens_per_call: int | None = None
                          ) -> None:
        await self.store.aexecute(self._access_op(scope, models_allow, models_deny,
                                                  tools_allow, tools_deny,
                                                  max_tokens_per_call))

    def clear_access(self, scope: str) -> None:
        path = _standard_scope(scope, "clear_access")
        self.store.execute(ops.SetAccess(tenant=path.tenant, scope=path.base, rule=None))

    def set_mode(self, tenant: str, mode: str | None) -> None:
        """"shadow" (never deny, record what would have been denied), "enforce", or None to
        follow the guard's own mode."""
        self.store.execute(ops.SetMode(tenant=check_name(tenant, "tenant"),
                                       mode=_mode(mode, allow_none=True)))

    async def aset_mode(self, tenant: str, mode: str | None) -> None:
        await self.store.aexecute(ops.SetMode(tenant=check_name(tenant, "tenant"),
                                              mode=_mode(mode, allow_none=True)))

    def assign_plan(self, tenant: str, plan: Plan) -> None:
        """Install `plan` for `tenant` in one step. Re-assigning (an upgrade) changes limits
        in place and keeps the period's spend; what the old plan had and the new one lacks
        is removed."""
        self.store.execute(self._plan_op(tenant, plan))

    async def aassign_plan(self, tenant: str, plan: Plan) -> None:
        await self.store.aexecute(self._plan_op(tenant, plan))

    def freeze(self, scope: str, unit: Unit | str | None = None) -> int:
        """Refuse new reservations on the budgets of `scope`; returns how many were frozen."""
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.FROZEN))

    async def afreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.FROZEN))

    def unfreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.ACTIVE))

    async def aunfreeze(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.ACTIVE))

    def close_budget(self, scope: str, unit: Unit | str | None = None) -> int:
        """Close the budgets of `scope` for good: reservations and records are refused."""
        return self.store.execute(self._status_op(scope, unit, BudgetStatus.CLOSED))

    async def aclose_budget(self, scope: str, unit: Unit | str | None = None) -> int:
        return await self.store.aexecute(self._status_op(scope, unit, BudgetStatus.CLOSED))

    def fund(self, scope: str, operation: FundOperation | str, amount: Amount, *,
             period: Period | str | PeriodChoice | None = AUTO, spent: int | None = None,
             idempotency_key: str | None = None) -> FundResult:
        """CREDIT, DEBIT, RESET, RESET_SPENT or REPAY_DEBT on a budget's current bucket."""
        return self.store.execute(self._fund_op(scope, operation, amount, period, spent,
                                                idempotency_key))

    async def afund(self, scope: str, operation: FundOperation | str, amount: Amount, *,
                    period: Period | str | PeriodChoice | None = AUTO,
                    spent: int | None = None, idempotency_key: str | None = None) -> FundResult:
        return await self.store.aexecute(self._fund_op(scope, operation, amount, period, spent,
                                                       idempotency_key))

    def transfer(self, source: str, destination: str, amount: Amount, *,
                 period: Period | str | PeriodChoice | None = AUTO,
                 idempotency_key: str | None = None) -> TransferResult:
        """Move allocation between two budgets of one tenant, atomically; refused (changing
        nothing) when the source's remaining cannot give that much."""
        return self.store.execute(self._transfer_op(source, destination, amount, period,
                                                    idempotency_key))

    async def atransfer(self, source: str, destination: str, amount: Amount, *,
                        period: Period | str | PeriodChoice | None = AUTO,
                        idempotency_key: str | None = None) -> TransferResult:
        return await self.store.aexecute(self._transfer_op(source, destination, amount, period,
                                                           idempotency_key))

    # -- enforcement ----------------------------------------------------------------------

    def reserve(self, subject: Subject | None, action: Action,
                estimate: AmountsLike | Elastic, *,
                ttl_ms: int | None = None, grace_ms: int | None = None,
                overage_policy: OveragePolicy | str | None = None,
                idempotency_key: str | None = None) -> Reservation:
        """Hold `estimate` on every budget of the subject, or raise `Denied` (a subclass).

        Access rules, quotas and budgets are all checked, and all charged, in one atomic
        step. An `al.Elastic` estimate may be reserved smaller, answered ALLOW_WITH_CAPS."""
        op = self._reserve_op(subject, action, estimate, ttl_ms, grace_ms, overage_policy,
                              idempotency_key, dry_run=False)
        try:
            return self._reserved(self.store.execute(op))
        except StoreUnavailable as error:
            return self._store_failed(op, error)

    async def areserve(self, subject: Subject | None, action: Action,
                       estimate: AmountsLike | Elastic, *,
                       ttl_ms: int | None = None, grace_ms: int | None = None,
                       overage_policy: OveragePolicy | str | None = None,
                       idempotency_key: str | None = None) -> Reservation:
        op = self._reserve_op(subject, action, estimate, ttl_ms, grace_ms, overage_policy,
                              idempotency_key, dry_run=False)
        try:
            return self._reserved(await self.store.aexecute(op))
        except StoreUnavailable as error:
            return self._store_failed(op, error)

    def decide(self, subject: Subject | None, action: Action,
               estimate: AmountsLike | Elastic) -> Decision:
        """What `reserve` would answer now, changing nothing."""
        op = self._reserve_op(subject, action, estimate, None, None, None, None, dry_run=True)
        return self._decided(op)

    async def adecide(self, subject: Subject | None, action: Action,
                      estimate: AmountsLike | Elastic) -> Decision:
        op = self._reserve_op(subject, action, estimate, None, None, None, None, dry_run=True)
        return await self._adecided(op)

    def commit(self, reservation_id: str, actual: AmountsLike, *,
               idempotency_key: str | None = None) -> CommitResult:
        """Charge the actual usage and return the rest of the estimate. Units the estimate
        held but `actual` leaves out are charged as estimated.

        A store failure is retried (a lost answer to an applied commit is recognised, never
        charged twice); if every try fails, `spend.unrecorded` is sent to the subscribers and
        sinks with the amounts, and `StoreUnavailable` is raised."""
        return self._committed(self._commit_op(reservation_id, actual, idempotency_key))

    async def acommit(self, reservation_id: str, actual: AmountsLike, *,
                      idempotency_key: str | None = None) -> CommitResult:
        return await self._acommitted(self._commit_op(reservation_id, actual, idempotency_key))

    def _committed(self, op: ops.Commit) -> CommitResult:
        for attempt in retry_delays(self.commit_retries):
            try:
                return self.store.execute(op)
            except StoreUnavailable as error:
                failure = error
            except ReservationFinalized:
                if attempt == 0:
                    raise
                return self._applied_commit(self.get(op.reservation_id))
            time.sleep(attempt)
        raise self._unrecorded(op.tenant, op.reservation_id, op.actual, failure)

    async def _acommitted(self, op: ops.Commit) -> CommitResult:
        for attempt in retry_delays(self.commit_retries):
            try:
                return await self.store.aexecute(op)
            except StoreUnavailable as error:
                failure = error
            except ReservationFinalized:
                if attempt == 0:
                    raise
                return self._applied_commit(await self.aget(op.reservation_id))
            await asyncio.sleep(attempt)
        raise self._unrecorded(op.tenant, op.reservation_id, op.actual, failure)

    # -- the adapters' entry points -------------------------------------------------------
    # An adapter calls the guard on every model call with values it built itself: a Subject
    # and Action it holds, and integer units in unit order. These take them as they are
    # instead of checking them again; the store sees the operations the public methods send.

    def _reserve_units(self, subject: Subject, action: Action, units: Units,
                       elastic: ops.ElasticTerms | None = None,
                       ttl_ms: int | None = None) -> Reservation:
        """`reserve(subject, action, estimate, ttl_ms=...)` for checked integer units and,
        for an elastic estimate, its per-million rates (in unit order), max_tokens and
        floor."""
        op = self._units_reserve_op(subject, action, units, elastic, ttl_ms)
        try:
            return self._reserved(self.store.execute(op))
        except StoreUnavailable as error:
            return self._store_failed(op, error)

    async def _areserve_units(self, subject: Subject, action: Action, units: Units,
                              elastic: ops.ElasticTerms | None = None,
                              ttl_ms: int | None = None) -> Reservation:
        op = self._units_reserve_op(subject, action, units, elastic, ttl_ms)
        try:
            return self._reserved(await self.store.aexecute(op))
        except StoreUnavailable as error:
            return self._store_failed(op, error)

    def _commit_units(self, tenant: str, reservation_id: str, actual: Units) -> CommitResult:
        """`commit(reservation_id, actual)` for a live reservation's own id and tenant and
        checked integer units."""
        return self._committed(ops.Commit(tenant=tenant, reservation_id=reservation_id,
                                          actual=actual, **NO_KEY))

    async def _acommit_units(self, tenant: str, reservation_id: str,
                             actual: Units) -> CommitResult:
        return await self._acommitted(ops.Commit(tenant=tenant, reservation_id=reservation_id,
                                                 actual=actual, **NO_KEY))

    def release(self, reservation_id: str, reason: str = "released", *,
                idempotency_key: str | None = None) -> ReleaseResult:
        return self.store.execute(self._release_op(reservation_id, reason, idempotency_key))

    async def arelease(self, reservation_id: str, reason: str = "released", *,
                       idempotency_key: str | None = None) -> ReleaseResult:
        return await self.store.aexecute(self._release_op(reservation_id, reason,
                                                          idempotency_key))

    def extend(self, reservation_id: str, by_ms: int, *,
               idempotency_key: str | None = None) -> ExtendResult:
        return self.store.execute(self._extend_op(reservation_id, by_ms, idempotency_key))

    async def aextend(self, reservation_id: str, by_ms: int, *,
                      idempotency_key: str | None = None) -> ExtendResult:
        return await self.store.aexecute(self._extend_op(reservation_id, by_ms,
                                                         idempotency_key))

    def record(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
               overage_policy: OveragePolicy | str | None = None,
               idempotency_key: str | None = None) -> RecordResult:
        """Charge a cost known only afterwards, without a reservation."""
        return self.store.execute(self._record_op(subject, action, actual, overage_policy,
                                                  idempotency_key))

    async def arecord(self, subject: Subject | None, action: Action, actual: AmountsLike, *,
                      overage_policy: OveragePolicy | str | None = None,
                      idempotency_key: str | None = None) -> RecordResult:
        return await self.store.aexecute(self._record_op(subject, action, actual,
                                                         overage_policy, idempotency_key))

    # -- reads and maintenance ------------------------------------------------------------

    def get(self, reservation_id: str) -> ReservationInfo:
        return self.store.execute(ops.Get(tenant=id_tenant(reservation_id),
                                          reservation_id=reservation_id))

    async def aget(self, reservation_id: str) -> ReservationInfo:
        return await self.store.aexecute(ops.Get(tenant=id_tenant(reservation_id),
                                                 reservation_id=reservation_id))

    def balances(self, scope: str, *, include_children: bool = True) -> tuple[Balance, ...]:
        """Current balances of the budgets at `scope` and (by default) below it, dimension
        ledgers included. Reads one tenant's state only, never the keyspace."""
        return self.store.execute(_balances_op(scope, include_children))

    async def abalances(self, scope: str, *,
                        include_children: bool = True) -> tuple[Balance, ...]:
        return await self.store.aexecute(_balances_op(scope, include_children))

    def audit(self, tenant: str, *, since: int | datetime | None = None,
              types: Any = None, limit: int = 100) -> tuple[AuditRecord, ...]:
        """The tenant's audit records, newest last: at most `limit`, from `since` (epoch ms
        or an aware datetime), of `types` (e.g. ["reservation.denied"])."""
        return self.store.execute(_audit_op(tenant, since, types, limit))

    async def aaudit(self, tenant: str, *, since: int | datetime | None = None,
                     types: Any = None, limit: int = 100) -> tuple[AuditRecord, ...]:
        return await self.store.aexecute(_audit_op(tenant, since, types, limit))

    def report(self, tenant: str, *, period: Period | str = "month",
               at: int | datetime | None = None) -> tuple[ReportRow, ...]:
        """Per scope, for the period containing `at` (default now): reservations, commits,
        releases, expiries, denials by reason, reserved vs committed, exhaustions."""
        return self.store.execute(_report_op(tenant, period, at))

    async def areport(self, tenant: str, *, period: Period | str = "month",
                      at: int | datetime | None = None) -> tuple[ReportRow, ...]:
        return await self.store.aexecute(_report_op(tenant, period, at))

    def sweep(self, limit: int = 1_000) -> int:
        """Expire up to `limit` overdue reservations now; returns how many expired."""
        return self.store.execute(ops.Sweep(tenant="", limit=check_int(limit, "limit", 1)))

    async def asweep(self, limit: int = 1_000) -> int:
        return await self.store.aexecute(ops.Sweep(tenant="", limit=check_int(limit, "limit",
                                                                             1)))

    # -- building operations (pure: validation and derivation only) -----------------------

    def _set_budget_op(self, scope: str, usd: Any, tokens: int | None, credits: int | None,
                       amount: int | None, unit: Unit | str | None, period: Any, per: Any,
                       overdraft_limit: Any, overage_policy: Any, degrade: Any = (),
                       alerts: Any = None) -> ops.SetBudget:
        path = parse_scope(scope)
        if path.dimension is not None:
            raise InvalidRequest(f"scope {scope!r}: set a budget for every {path.dimension[0]} "
                                 f"with per={path.dimension[0]!r} on {path.base!r}; fund() "
                                 "moves one dimension ledger")
        given = {k: v for k, v in (("usd", usd), ("tokens", tokens), ("credits", credits),
                                   ("amount", amount)) if v is not None}
        if len(given) != 1:
            raise InvalidRequest("set_budget: give exactly one of usd=, tokens=, credits= or "
                                 f"amount= (with unit=); got {sorted(given) or 'none'}")
        (kind, value), = given.items()
        if kind == "usd":
            budget_unit, limit = Unit.USD_MICROCENTS, usd_to_microcents(value, "usd")
        elif kind == "amount":
            budget_unit = _unit(unit)
            limit = check_int(value, "amount")
        else:
            budget_unit = Unit.TOKENS if kind == "tokens" else Unit.CREDITS
            limit = check_int(value, kind)
        if kind != "amount" and unit is not None and _unit(unit) is not budget_unit:
            raise InvalidRequest(f"unit={unit!r} contradicts {kind}=")
        return ops.SetBudget(
            tenant=path.tenant, scope=path.base, per=None if per is None else _per(per),
            unit=budget_unit, period=parse_period(period), limit=limit,
            overdraft_limit=_limit_like(overdraft_limit, budget_unit, kind == "usd"),
            overage_policy=_policy(overage_policy) or OveragePolicy.ALLOW_IF_AVAILABLE,
            degrade=_degrade(degrade), alerts=_alerts(alerts))

    def _remove_budget_op(self, scope: str, unit: Unit | str, period: Any,
                          per: Any) -> ops.RemoveBudget:
        path = _standard_scope(scope, "remove_budget")
        return ops.RemoveBudget(tenant=path.tenant, scope=path.base, unit=_unit(unit),
                                period=parse_period(period),
                                per=None if per is None else _per(per))

    def _quota_op(self, scope: str, calls: int | None, runs: int | None,
                  concurrent: int | None, window: Any, action_kind: str,
                  remove: bool) -> ops.SetQuota:
        path = parse_scope(scope)
        if path.dimension is not None:
            raise InvalidRequest(f"scope {scope!r}: quotas belong to a standard scope; runs "
                                 "quotas count the run dimension themselves")
        given = {k: v for k, v in (("calls", calls), ("runs", runs),
                                   ("concurrent", concurrent)) if v is not None}
        if len(given) != 1:
            raise InvalidRequest("set_quota: give exactly one of calls=, runs= or concurrent= "
                                 f"(got {sorted(given) or 'none'})")
        (name, limit), = given.items()
        kind = QuotaKind(name)
        period = parse_period(window)
        if kind is QuotaKind.CONCURRENT and period is not None:
            raise InvalidRequest("window: a concurrent quota has no window")
        if kind is not QuotaKind.CONCURRENT and period is None:
            raise InvalidRequest(f"window: {name}= needs a window (minute, hour, day, month)")
        if not isinstance(action_kind, str) or not 0 < len(action_kind) <= 64:
            raise InvalidRequest("action_kind: expected a glob on action kinds, e.g. 'tool.*'")
        rule = QuotaRule(path.base, kind, check_int(limit, name), period, action_kind)
        return ops.SetQuota(tenant=path.tenant, rule=rule, remove=remove)

    def _access_op(self, scope: str, models_allow: Any, models_deny: Any, tools_allow: Any,
                   tools_deny: Any, max_tokens_per_call: int | None) -> ops.SetAccess:
        path = _standard_scope(scope, "set_access")
        rule = AccessRule(
            path.base, glob_list(models_allow, "models_allow"),
            glob_list(models_deny, "models_deny"), glob_list(tools_allow, "tools_allow"),
            glob_list(tools_deny, "tools_deny"),
            None if max_tokens_per_call is None else check_int(
                max_tokens_per_call, "max_tokens_per_call", 1))
        return ops.SetAccess(tenant=path.tenant, scope=path.base, rule=rule)

    def _plan_op(self, tenant: str, plan: Plan) -> ops.ApplyPlan:
        if not isinstance(plan, Plan):
            raise InvalidRequest(f"plan: expected an al.Plan, got {plan!r}")
        tenant = check_name(tenant, "tenant")
        definitions: list[ops.SetBudget | ops.SetQuota | ops.SetAccess] = []
        for b in plan.budgets:
            definitions.append(self._set_budget_op(
                relative_scope(tenant, b.scope), b.usd, b.tokens, b.credits, b.amount, b.unit,
                b.period, b.per, b.overdraft_limit, b.overage_policy, b.degrade, b.alerts))
        for q in plan.quotas:
            definitions.append(self._quota_op(relative_scope(tenant, q.scope), q.calls, q.runs,
                                              q.concurrent, q.window, q.action_kind,
                                              remove=False))
        for a in plan.access:
            definitions.append(self._access_op(relative_scope(tenant, a.scope), a.models_allow,
                                               a.models_deny, a.tools_allow, a.tools_deny,
                                               a.max_tokens_per_call))
        return ops.ApplyPlan(tenant=tenant, name=plan.name, definitions=tuple(definitions),
                             mode=plan.mode)

    def _status_op(self, scope: str, unit: Unit | str | None,
                   status: BudgetStatus) -> ops.SetStatus:
        path = _standard_scope(scope, "freeze, unfreeze and close_budget")
        return ops.SetStatus(tenant=path.tenant, scope=path.base,
                             unit=None if unit is None else _unit(unit), status=status)

    def _fund_op(self, scope: str, operation: Any, amount: Amount, period: Any,
                 spent: int | None, key: str | None) -> ops.Fund:
        path = parse_scope(scope)
        operation = _enum(FundOperation, operation, "operation")
        units = _units(amount, "amount")
        if len(units) != 1:
            raise InvalidRequest("amount: fund one unit at a time")
        spent = None if spent is None else check_int(spent, "spent")
        period = period if period is AUTO else parse_period(period)
        unit, value = units[0]
        return ops.Fund(tenant=path.tenant, scope=path.path, unit=unit, period=period,
                        operation=operation, amount=value, spent=spent,
                        **_keyed(key, "fund", path.path, unit, period, operation, value, spent))

    def _transfer_op(self, source: str, destination: str, amount: Amount, period: Any,
                     key: str | None) -> ops.Transfer:
        src, dst = parse_scope(source), parse_scope(destination)
        if src.tenant != dst.tenant:
            raise InvalidRequest("transfer: both budgets must belong to one tenant "
                                 f"(got {src.tenant!r} and {dst.tenant!r})")
        units = _units(amount, "amount")
        if len(units) != 1:
            raise InvalidRequest("amount: transfer one unit at a time")
        period = period if period is AUTO else parse_period(period)
        unit, value = units[0]
        return ops.Transfer(tenant=src.tenant, source=src.path, destination=dst.path, unit=unit,
                            period=period, amount=value,
                            **_keyed(key, "transfer", src.path, dst.path, unit, period, value))

    def _reserve_op(self, subject: Subject | None, action: Action,
                    estimate: AmountsLike | Elastic, ttl_ms: int | None, grace_ms: int | None,
                    overage_policy: Any, key: str | None, dry_run: bool) -> ops.Reserve:
        subject = _subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        elastic = None
        if isinstance(estimate, Elastic):
            units = in_unit_order(estimate.units())
            elastic = _exact(ops.ElasticTerms(in_unit_order(estimate.rates()), estimate.max_tokens,
                                         estimate.floor))
        else:
            units = _units(estimate, "estimate")
        ttl = self.ttl_ms if ttl_ms is None else check_int(ttl_ms, "ttl_ms", *TTL_RANGE)
        grace = self.grace_ms if grace_ms is None else check_int(grace_ms, "grace_ms",
                                                                 *GRACE_RANGE)
        policy = _policy(overage_policy)
        return self._checked_reserve_op(
            subject, action, units, elastic, ttl, grace, policy, dry_run,
            _keyed(key, "reserve", subject, action, units, elastic, ttl, grace, policy))

    def _checked_reserve_op(self, subject: Subject, action: Action, units: Units,
                            elastic: ops.ElasticTerms | None, ttl: int, grace: int,
                            policy: OveragePolicy | None, dry_run: bool,
                            keyed: dict[str, Any]) -> ops.Reserve:
        """The reserve operation from checked parts: one place, so the public and the
        adapters' entry points send the store the same thing."""
        return ops.Reserve(
            tenant=subject.tenant, scopes=subject.scopes(), dimensions=subject.dimension_items,
            subject=subject, action=action, estimate=units, ttl_ms=ttl, grace_ms=grace,
            max_extensions=self.max_extensions, overage_policy=policy, dry_run=dry_run,
            elastic=elastic, shadow=self.mode == "shadow",
            default_plan=self._default_plan(subject.tenant), **keyed)

    def _units_reserve_op(self, subject: Subject, action: Action, units: Units,
                          elastic: ops.ElasticTerms | None, ttl_ms: int | None) -> ops.Reserve:
        """For `_reserve_units`: only what an adapter cannot vouch for is checked."""
        shrinkable = None if elastic is None else _exact(elastic)
        ttl = self.ttl_ms if ttl_ms is None else check_int(ttl_ms, "ttl_ms", *TTL_RANGE)
        return self._checked_reserve_op(subject, action, units, shrinkable, ttl,
                                        self.grace_ms, None, False, NO_KEY)

    def _default_plan(self, tenant: str) -> ops.ApplyPlan | None:
        if self.default_plan is None:
            return None
        op = self._default_plans.get(tenant)
        if op is None:
            op = self._default_plans[tenant] = self._plan_op(tenant, self.default_plan)
        return op

    def _commit_op(self, rid: str, actual: AmountsLike, key: str | None) -> ops.Commit:
        units = _units(actual, "actual")
        return ops.Commit(tenant=id_tenant(rid), reservation_id=rid, actual=units,
                          **_keyed(key, "commit", units))

    def _release_op(self, rid: str, reason: str, key: str | None) -> ops.Release:
        if not isinstance(reason, str) or len(reason) > 256:
            raise InvalidRequest("reason: expected a string of at most 256 characters")
        return ops.Release(tenant=id_tenant(rid), reservation_id=rid, reason=reason,
                           **_keyed(key, "release", reason))

    def _extend_op(self, rid: str, by_ms: int, key: str | None) -> ops.Extend:
        by = check_int(by_ms, "by_ms", 1, TTL_RANGE[1])
        return ops.Extend(tenant=id_tenant(rid), reservation_id=rid, by_ms=by,
                          **_keyed(key, "extend", by))

    def _record_op(self, subject: Subject | None, action: Action, actual: AmountsLike,
                   overage_policy: Any, key: str | None) -> ops.Record:
        subject = _subject(subject)
        if not isinstance(action, Action):
            raise InvalidRequest(f"action: expected an Action, got {action!r}")
        units = _units(actual, "actual")
        policy = _policy(overage_policy)
        return ops.Record(
            tenant=subject.tenant, scopes=subject.scopes(),
            dimensions=subject.dimension_items, subject=subject,
            action=action, actual=units, overage_policy=policy, shadow=self.mode == "shadow",
            **_keyed(key, "record", subject, action, units, policy))

    # -- interpreting results -------------------------------------------------------------

    def _store_failed(self, op: ops.Reserve, error: StoreUnavailable) -> Reservation:
        """Fail closed (raise), or open: the call proceeds unguarded and its spend is
        recorded when it commits, once the store answers again."""
        self.store_failures += 1
        if self.on_store_error == "deny":
            raise error
        log.warning("store unavailable, letting %s through unguarded: %s", op.tenant, error)
        estimate = trusted_amounts(op.estimate)
        info = ReservationInfo(new_id(op.tenant), op.tenant,
                               ReservationStatus.ACTIVE, op.subject, op.action, estimate,
                               op.scopes, 0, 0, op.grace_ms, 0, op.overage_policy)
        decision = Decision(Outcome.ALLOW, reason=STORE_UNAVAILABLE)
        return Reservation(self, info, decision, (), unguarded=True)

    def _applied_commit(self, info: ReservationInfo) -> CommitResult:
        """A retried commit found its first try applied: answer from the stored record."""
        if info.status is not ReservationStatus.COMMITTED:
            raise ReservationFinalized(f"reservation {info.id} is already {info.status.value}")
        charged = {a.unit: a.amount for a in info.charged}
        released = tuple(Amount.trusted(a.unit, max(0, a.amount - charged.get(a.unit, 0)))
                         for a in info.estimate)
        return CommitResult(info.id, ReservationStatus.COMMITTED, info.charged, released, ())

    def _unrecorded(self, tenant: str, reservation_id: str, actual: Units,
                    error: StoreUnavailable) -> StoreUnavailable:
        """Never drop spend silently: tell the subscribers and sinks what could not be
        written, then let the caller know."""
        amounts = trusted_amounts(actual)
        log.error("spend of %s on %s could not be recorded: %s", amounts, reservation_id, error)
        self._notify([Notification(SPEND_UNRECORDED, tenant, system_ms(),
                                   reservation_id=reservation_id, amounts=amounts)])
        return StoreUnavailable(f"commit of {reservation_id} failed after "
                                f"{self.commit_retries + 1} tries ({error}); the spend was sent "
                                f"to the notification sinks as {SPEND_UNRECORDED}")

    def _reserved(self, outcome: ops.ReserveOutcome) -> Reservation:
        if outcome.reservation is None:
            raise denied(outcome.decision)
        return Reservation(self, outcome.reservation, outcome.decision, outcome.balances)

    def _decided(self, op: ops.Reserve) -> Decision:
        try:
            return self.store.execute(op).decision
        except Denied as error:
            return error.decision

    async def _adecided(self, op: ops.Reserve) -> Decision:
        try:
            return (await self.store.aexecute(op)).decision
        except Denied as error:
            return error.decision


def denied(decision: Decision) -> Denied:
    """The error class that fits a denial's reason."""
    if decision.reason in Reason.BUDGET:
        return BudgetExceeded(decision)
    if decision.reason in Reason.QUOTA:
        return QuotaExceeded(decision)
    if decision.reason in Reason.ACCESS:
        return NotAllowed(decision)
    return Denied(decision)


def _balances_op(scope: str, include_children: bool) -> ops.Balances:
    path = parse_scope(scope)
    if not isinstance(include_children, bool):
        raise InvalidRequest(f"include_children: expected True or False, got "
                             f"{include_children!r}")
    return ops.Balances(tenant=path.tenant, scope=path.path, include_children=include_children)


def _standard_scope(scope: str, what: str) -> ScopePath:
    """A scope without a dimension: rules and statuses belong to standard scopes."""
    path = parse_scope(scope)
    if path.dimension is not None:
        raise InvalidRequest(f"scope {scope!r}: {what} takes a standard scope such as "
                             f"{path.base!r}; a {path.dimension[0]} ledger follows its "
                             f"template (per={path.dimension[0]!r}) there")
    return path


def _per(value: Any) -> str:
    try:
        return check_dimension_key(value)
    except InvalidRequest as error:
        raise InvalidRequest(f"per: {error}") from None


def _subject(subject: Subject | None) -> Subject:
    if subject is None:
        subject = current_subject()
        if subject is None:
            raise InvalidRequest("subject: none given and no al.scope(tenant=...) is active")
    if not isinstance(subject, Subject):
        raise InvalidRequest(f"subject: expected a Subject, got {subject!r}")
    return subject


def _mode(value: Any, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if value not in ("enforce", "shadow"):
        raise InvalidRequest(f"mode: {value!r} is not 'enforce' or 'shadow'"
                             + (" (or None to follow the guard)" if allow_none else ""))
    return str(value)


def _quota_kind(kind: str) -> tuple[int | None, int | None, int | None]:
    """The calls/runs/concurrent triple that names one quota kind (limits are not needed
    to remove one)."""
    try:
        index = [k.value for k in QuotaKind].index(kind)
    except ValueError:
        raise InvalidRequest(f"kind: {kind!r} is not calls, runs or concurrent") from None
    triple: list[int | None] = [None, None, None]
    triple[index] = 0
    return triple[0], triple[1], triple[2]


def _degrade(value: Any) -> tuple[Degrade, ...]:
    if not value:
        return ()
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (Degrade, dict)) for v in value):
        raise InvalidRequest("degrade: expected a list of al.Degrade(below=..., max_tokens=..."
                             ", model=...) or of dicts with those keys")
    rules = tuple(v if isinstance(v, Degrade) else Degrade(**v) for v in value)
    return tuple(sorted(rules, key=lambda rule: -rule.below))


def _alerts(value: Any) -> tuple[float, ...]:
    if value is None:
        return (0.5, 0.8, 1.0)
    if not isinstance(value, (list, tuple)):
        raise InvalidRequest("alerts: expected a list of fractions, e.g. [0.5, 0.8, 1.0]")
    fractions = tuple(value)
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1
               for f in fractions):
        raise InvalidRequest("alerts: expected fractions of the allocation in (0, 1], "
                             "e.g. [0.5, 0.8, 1.0]")
    return tuple(sorted(float(f) for f in fractions))


def _audit_op(tenant: str, since: int | datetime | None, types: Any, limit: int) -> ops.Audit:
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise InvalidRequest("since: give an aware datetime (with tzinfo) or epoch ms")
        since = int(since.timestamp() * 1000)
    elif since is not None:
        since = check_int(since, "since")
    kinds = None if types is None else frozenset([types] if isinstance(types, str) else types)
    return ops.Audit(tenant=check_name(tenant, "tenant"), since_ms=since, types=kinds,
                     limit=check_int(limit, "limit", 1, 100_000))


def _report_op(tenant: str, period: Any, at: int | datetime | None) -> ops.Report:
    window = parse_period(period)
    if window is None:
        raise InvalidRequest("period: a report covers one period: day, week, month or year")
    if isinstance(at, datetime):
        at = int(at.timestamp() * 1000)
    elif at is not None:
        at = check_int(at, "at")
    return ops.Report(tenant=check_name(tenant, "tenant"), period=window, at_ms=at)


def _exact(elastic: ops.ElasticTerms) -> ops.ElasticTerms:
    """An elastic estimate the store can hold exactly (checked again for every estimate:
    `model_construct()` and the adapters' units skip the model's own validation)."""
    for _, rate in elastic.rates:
        if rate * elastic.max_tokens > ELASTIC_LIMIT:
            raise InvalidRequest("estimate: per_mtok × max_tokens is more than can be "
                                 "reserved exactly; lower max_tokens")
    return elastic


def _units(value: AmountsLike, field: str) -> Units:
    if isinstance(value, Amount):
        return ((value.unit, value.amount),)
    return in_unit_order(amounts_by_unit(value, field))


def _unit(value: Unit | str | None) -> Unit:
    if value is None:
        raise InvalidRequest("unit: required with amount=; one of "
                             + ", ".join(u.value for u in Unit))
    unit: Unit = _enum(Unit, value, "unit")
    return unit


def _policy(value: OveragePolicy | str | None) -> OveragePolicy | None:
    return None if value is None else _enum(OveragePolicy, value, "overage_policy")


def _enum(kind: Any, value: Any, field: str) -> Any:
    try:
        return kind(value.upper() if isinstance(value, str) else value)
    except ValueError:
        names = ", ".join(member.value for member in kind)
        raise InvalidRequest(f"{field}: {value!r} is not one of {names}") from None


def _limit_like(value: Any, unit: Unit, in_dollars: bool) -> int:
    """overdraft_limit in the same terms as the limit: dollars with usd=, else the unit."""
    if isinstance(value, Amount):
        if value.unit is not unit:
            raise InvalidRequest(f"overdraft_limit: {value.unit.value} given for a "
                                 f"{unit.value} budget")
        return value.amount
    if in_dollars:
        return usd_to_microcents(to_decimal(value, "overdraft_limit"), "overdraft_limit")
    return check_int(value, "overdraft_limit", 0, MAX_AMOUNT)


def _keyed(key: str | None, *payload: Any) -> dict[str, Any]:
    """Idempotency fields: a caller's key gets a payload fingerprint; with no key there is
    nothing to replay, so none is stored."""
    if key is None:
        return NO_KEY
    return {"idempotency_key": check_idempotency_key(key), "fingerprint": _fingerprint(payload)}


def _fingerprint(payload: tuple[Any, ...]) -> str:
    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if hasattr(value, "value"):
            return value.value
        return value if value is None or isinstance(value, (int, str)) else repr(value)

    text = json.dumps(plain(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


