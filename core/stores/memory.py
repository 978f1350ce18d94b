"""The embedded store: all state in one process, every operation under one lock.

Each public operation is one method run while holding the lock, so a reservation evaluates
access rules, quotas and every ledger, and then charges all of them, in one step — as the
Redis store does in one script call. Every check runs before the first write, and the audit
record of a change is written in the same step as the change.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeVar

from .. import ledger, policy
from ..amounts import Amount, Unit, Units
from ..clock import system_ms
from ..errors import (
    BudgetExceeded,
    Denied,
    IdempotencyMismatch,
    InvalidRequest,
    MaxExtensionsExceeded,
    NotFound,
    ReservationExpired,
    ReservationFinalized,
    UnitMismatch,
)
from ..events import (
    AuditRecord,
    AuditType,
    Notification,
    NotificationType,
    ReportRow,
    report_rows,
)
from ..ids import new_id
from ..models import (
    Action,
    Balance,
    BudgetStatus,
    Caps,
    CommitResult,
    Decision,
    ExtendResult,
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
from ..periods import Period, bucket, bucket_end_ms
from ..scopes import Subject, parse_scope
from ..validation import MAX_AMOUNT
from .operations import (
    AUTO,
    PERIOD_ORDER,
    UNIT_ORDER,
    ApplyPlan,
    Audit,
    Balances,
    Commit,
    Extend,
    Fund,
    Get,
    Op,
    Record,
    Release,
    RemoveBudget,
    Report,
    Reserve,
    ReserveOutcome,
    SetAccess,
    SetBudget,
    SetMode,
    SetQuota,
    SetStatus,
    Sweep,
    Transfer,
    in_unit_order,
)

R = TypeVar("R")
DefKey = tuple[str, Unit, "Period | None", "str | None"]
"""A budget definition: (scope, unit, period, per-dimension key or None)."""
LedgerKey = tuple[str, Unit, "Period | None", str]
"""A ledger: (scope path incl. any dimension, unit, period, bucket)."""
QuotaKey = tuple[str, policy.QuotaKind, "Period | None", str]
AuditEntry = tuple[int, int, str, str, "Subject | None", "Action | None", dict[str, Any]]
"""seq, at_ms, type, tenant, subject, action, other fields: an AuditRecord once read."""

DAY_MS = 86_400_000
_EMPTY: list[Any] = []  # never appended to: what a finished reservation keeps
RESERVED = {unit: f"reserved:{unit.value}" for unit in Unit}  # report counter names
COMMITTED = {unit: f"committed:{unit.value}" for unit in Unit}
ROUTE_CACHE = 1024  # routes kept per tenant (one per subject shape, run dimensions included)
ALLOW = Decision(Outcome.ALLOW)


@dataclass
class _Definition:
    scope: str
    unit: Unit
    period: Period | None
    per: str | None
    limit: int
    overdraft_limit: int
    overage_policy: OveragePolicy
    degrade: tuple[policy.Degrade, ...] = ()
    alerts: tuple[float, ...] = (0.5, 0.8, 1.0)
    status: BudgetStatus = BudgetStatus.ACTIVE

    @property
    def key(self) -> DefKey:
        return (self.scope, self.unit, self.period, self.per)

    def order(self) -> tuple[bool, int, int, str]:
        """Canonical order inside one scope: plain budgets first, then unit, period, key."""
        return (self.per is not None, UNIT_ORDER[self.unit], PERIOD_ORDER[self.period],
                self.per or "")


@dataclass(slots=True)
class _Reservation:
    id: str
    subject: Subject
    action: Action
    estimate: dict[Unit, int]
    estimate_amounts: tuple[Amount, ...]
    ledgers: list[tuple[LedgerKey, _Definition]]
    scopes: tuple[str, ...]
    epoch: int  # the tenant's definitions epoch when made: its definitions are current
    created_at_ms: int
    expires_at_ms: int
    grace_ms: int
    max_extensions: int
    overage_policy: OveragePolicy | None
    concurrency: list[QuotaKey]
    shadow: bool
    status: ReservationStatus = ReservationStatus.ACTIVE
    extensions: int = 0
    charged: Units = ()
    finalized_at_ms: int | None = None
    commit: tuple[str, str, CommitResult] | None = None  # key, fingerprint, result
    release: tuple[str, str, ReleaseResult] | None = None
    extends: dict[str, tuple[str, ExtendResult]] | None = None

    @property
    def deadline_ms(self) -> int:
        return self.expires_at_ms + self.grace_ms

    def info(self) -> ReservationInfo:
        return ReservationInfo(
            self.id, self.subject.tenant, self.status, self.subject, self.action,
            self.estimate_amounts, self.scopes,
            self.created_at_ms, self.expires_at_ms, self.grace_ms, self.extensions,
            self.overage_policy, _amounts(self.charged), self.finalized_at_ms)


@dataclass
class _Idempotent:
    fingerprint: str
    result: Any
    expires_at_ms: int


@dataclass
class _Tenant:
    definitions: dict[str, dict[DefKey, _Definition]] = field(default_factory=dict)
    epoch: int = 0  # moves whenever a definition is added or removed
    routes: dict[tuple[Any, ...], _Route] = field(default_factory=dict)  # of this epoch
    ledgers: dict[LedgerKey, ledger.Ledger] = field(default_factory=dict)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    expiry: list[tuple[int, str]] = field(default_factory=list)  # (deadline, id), lazily pruned
    idempotency: dict[tuple[str, str], _Idempotent] = field(default_factory=dict)
    quotas: dict[str, dict[QuotaKey, policy.QuotaRule]] = field(default_factory=dict)
    access: dict[str, policy.AccessRule] = field(default_factory=dict)
    calls: dict[tuple[QuotaKey, str], int] = field(default_factory=dict)
    runs: dict[tuple[QuotaKey, str], set[str]] = field(default_factory=dict)
    active: dict[QuotaKey, int] = field(default_factory=dict)
    mode: str | None = None
    plan: str | None = None
    plan_keys: set[tuple[str, Any]] = field(default_factory=set)
    audit: deque[AuditEntry] = field(default_factory=deque)
    seq: int = 0
    report: dict[str, int] = field(default_factory=dict)  # "day|scope|counter" -> count
    tally_prefix: dict[tuple[int, str], str] = field(default_factory=dict)


class _Route(NamedTuple):
    """Where a subject's charges in some units go: (scope path, unit, period, definition)
    per ledger, in canonical order, and the scope paths once each."""

    ledgers: tuple[tuple[str, Unit, Period | None, _Definition], ...]
    scopes: tuple[str, ...]


@dataclass
class _Evaluation:
    """Everything a reservation would do, worked out before anything is written."""

    denial: Decision | None
    scopes: tuple[str, ...]
    states: list[tuple[LedgerKey, _Definition, ledger.Ledger]]
    estimate: dict[Unit, int]
    caps: Caps | None
    calls: list[tuple[QuotaKey, str]]
    runs: list[tuple[QuotaKey, str, str]]
    concurrency: list[QuotaKey]


class MemoryStore:
    """Thread-safe in-process store; `clock` returns integer milliseconds and may be moved."""

    def __init__(self, clock: Callable[[], int] = system_ms, *, reap_batch: int = 16,
                 idempotency_ttl_ms: int = DAY_MS, finished_retention_ms: int = DAY_MS,
                 dimension_idle_ttl_ms: int = 30 * DAY_MS, audit_retention: int = 10_000
                 ) -> None:
        self.clock = clock
        self.reap_batch = reap_batch
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.finished_retention_ms = finished_retention_ms
        self.dimension_idle_ttl_ms = dimension_idle_ttl_ms
        self.audit_retention = audit_retention
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._listeners: list[Callable[[list[Notification]], None]] = []
        self._notes: list[Notification] = []
        self._handlers: dict[type[Any], Callable[[_Tenant, Any, int], Any]] = {
            SetBudget: self._set_budget, RemoveBudget: self._remove_budget,
            SetStatus: self._set_status, SetQuota: self._set_quota, SetAccess: self._set_access,
            SetMode: self._set_mode, ApplyPlan: self._apply_plan, Reserve: self._reserve,
            Commit: self._commit, Release: self._release, Extend: self._extend,
            Record: self._record, Get: self._get, Balances: self._balances, Fund: self._fund,
            Transfer: self._transfer, Audit: self._audit, Report: self._report,
        }

    def lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """One process holds all of this store: its sweeper never competes."""
        return True

    def subscribe(self, listener: Callable[[list[Notification]], None]) -> None:
        """Called with each operation's notifications, after the lock is released."""
        self._listeners.append(listener)

    def execute(self, op: Op[R]) -> R:
        with self._lock:
            now = self.clock()
            if isinstance(op, Sweep):
                result: R = self._sweep(op, now)  # type: ignore[assignment]
            else:
                tenant = self._tenants.get(op.tenant)
                if tenant is None:
                    tenant = self._tenants[op.tenant] = _Tenant()
                elif tenant.expiry and tenant.expiry[0][0] < now:
                    self._reap(tenant, op.tenant, now, self.reap_batch)
                result = self._handlers[type(op)](tenant, op, now)
            notes = self._notes
            if notes:
                self._notes = []
        if notes:
            for listener in self._listeners:
                listener(notes)
        return result

    async def aexecute(self, op: Op[R]) -> R:
        # The lock is held for microseconds and never across an await, so calling through
        # is cheaper than a hop to a thread and keeps one event loop's operations in order.
        return self.execute(op)

    def close(self) -> None:
        pass

    # -- definitions ----------------------------------------------------------------------

    def _set_budget(self, t: _Tenant, op: SetBudget, now: int) -> tuple[Balance, ...]:
        defs = t.definitions.setdefault(op.scope, {})
        d = defs.get((op.scope, op.unit, op.period, op.per))
        if d is None:
            d = _Definition(op.scope, op.unit, op.period, op.per, op.limit, op.overdraft_limit,
                            op.overage_policy, op.degrade, op.alerts)
            defs[d.key] = d
            t.definitions[op.scope] = dict(sorted(defs.items(), key=lambda kv: kv[1].order()))
            _redefined(t)
        else:
            d.limit, d.overdraft_limit, d.overage_policy = (op.limit, op.overdraft_limit,
                                                            op.overage_policy)
            d.degrade, d.alerts = op.degrade, op.alerts
        self._log(t, op.tenant, now, AuditType.BUDGET_SET, scopes=(op.scope,), detail={
            "unit": op.unit.value, "limit": op.limit, "period": _name(op.period), "per": op.per})
        current = bucket(op.period, now)
        if op.per is not None:  # every dimension ledger of this bucket follows, now
            for key in list(self._dimension_ledgers(t, d, current)):
                self._ledger(t, key, d, now).recompute_over_limit(d.overdraft_limit)
            return ()
        key = (op.scope, op.unit, op.period, current)
        state = t.ledgers[key] = self._ledger(t, key, d, now)
        state.recompute_over_limit(d.overdraft_limit)
        return (_balance(key, state, d),)

    def _remove_budget(self, t: _Tenant, op: RemoveBudget, now: int) -> int:
        removed = t.definitions.get(op.scope, {}).pop((op.scope, op.unit, op.period, op.per),
                                                      None)
        if removed is not None:
            _redefined(t)
            self._log(t, op.tenant, now, AuditType.BUDGET_SET, scopes=(op.scope,),
                      detail={"unit": op.unit.value, "removed": True})
        return int(removed is not None)

    def _set_status(self, t: _Tenant, op: SetStatus, now: int) -> int:
        matched = [d for d in t.definitions.get(op.scope, {}).values()
                   if op.unit is None or d.unit is op.unit]
        if not matched:
            raise NotFound(f"no budget at {op.scope}"
                           + (f" in {op.unit.value}" if op.unit else ""))
        for d in matched:
            d.status = op.status
        self._log(t, op.tenant, now, AuditType.BUDGET_STATUS, scopes=(op.scope,),
                  detail={"status": op.status.value, "budgets": len(matched)})
        return len(matched)

    def _set_quota(self, t: _Tenant, op: SetQuota, now: int) -> None:
        rules = t.quotas.setdefault(op.rule.scope, {})
        if op.remove:
            rules.pop(op.rule.key, None)
        else:
            rules[op.rule.key] = op.rule
        self._log(t, op.tenant, now, AuditType.QUOTA_SET, scopes=(op.rule.scope,), detail={
            "kind": op.rule.kind.value, "limit": None if op.remove else op.rule.limit,
            "window": _name(op.rule.window), "action_kind": op.rule.action_kind})

    def _set_access(self, t: _Tenant, op: SetAccess, now: int) -> None:
        if op.rule is None:
            t.access.pop(op.scope, None)
        else:
            t.access[op.scope] = op.rule
        self._log(t, op.tenant, now, AuditType.ACCESS_SET, scopes=(op.scope,),
                  detail={"removed": op.rule is None})

    def _set_mode(self, t: _Tenant, op: SetMode, now: int) -> None:
        t.mode = op.mode
        self._log(t, op.tenant, now, AuditType.MODE_SET, detail={"mode": op.mode})

    def _apply_plan(self, t: _Tenant, op: ApplyPlan, now: int) -> None:
        keys: set[tuple[str, Any]] = set()
        for definition in op.definitions:
            if isinstance(definition, SetBudget):
                keys.add(("budget", (definition.scope, definition.unit, definition.period,
                                     definition.per)))
            elif isinstance(definition, SetQuota):
                keys.add(("quota", definition.rule.key))
            else:
                keys.add(("access", definition.scope))
            self._handlers[type(definition)](t, definition, now)
        for kind, key in t.plan_keys - keys:  # what the previous plan had and this one lacks
            if kind == "budget":
                t.definitions.get(key[0], {}).pop(key, None)
                _redefined(t)
            elif kind == "quota":
                t.quotas.get(key[0], {}).pop(key, None)
            else:
                t.access.pop(key, None)
        t.plan, t.plan_keys = op.name, keys
        if op.mode is not None:
            t.mode = op.mode
        self._log(t, op.tenant, now, AuditType.PLAN_ASSIGNED, detail={"plan": op.name})

    # -- administration of allocations ------------------------------------------------------

    def _fund(self, t: _Tenant, op: Fund, now: int) -> FundResult:
        replay = self._replay(t, "fund", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        key, d = self._locate(t, op.scope, op.unit, op.period, now)
        state = self._ledger(t, key, d, now)
        after = ledger.fund(state, op.operation, op.amount, op.spent, d.overdraft_limit)
        if after is None:
            raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, key[0], op.unit, None,
                                               state, op.amount, now))
        t.ledgers[key] = after
        result = FundResult(_balance(key, state, d), _balance(key, after, d))
        self._remember(t, "fund", op.idempotency_key, op.fingerprint, result, now)
        self._log(t, op.tenant, now, AuditType.BUDGET_FUNDED, scopes=(key[0],),
                  idempotency_key=op.idempotency_key, actual=(Amount(op.unit, op.amount),),
                  detail={"operation": op.operation.value})
        return result

    def _transfer(self, t: _Tenant, op: Transfer, now: int) -> TransferResult:
        replay = self._replay(t, "transfer", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        skey, sdef = self._locate(t, op.source, op.unit, op.period, now)
        dkey, ddef = self._locate(t, op.destination, op.unit, op.period, now)
        if skey == dkey:
            raise InvalidRequest("transfer: source and destination are the same budget")
        source, destination = self._ledger(t, skey, sdef, now), self._ledger(t, dkey, ddef, now)
        if source.remaining < op.amount:
            raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, skey[0], op.unit, None,
                                               source, op.amount, now))
        if destination.allocated + op.amount > MAX_AMOUNT:
            raise InvalidRequest(f"amount: {dkey[0]} would hold more than a ledger can "
                                 f"({MAX_AMOUNT})")
        source.allocated -= op.amount
        destination.allocated += op.amount
        destination.recompute_over_limit(ddef.overdraft_limit)
        t.ledgers[skey], t.ledgers[dkey] = source, destination
        result = TransferResult(_balance(skey, source, sdef), _balance(dkey, destination, ddef))
        self._remember(t, "transfer", op.idempotency_key, op.fingerprint, result, now)
        self._log(t, op.tenant, now, AuditType.BUDGET_TRANSFERRED, scopes=(skey[0], dkey[0]),
                  idempotency_key=op.idempotency_key, actual=(Amount(op.unit, op.amount),))
        return result

    # -- enforcement ----------------------------------------------------------------------

    def _reserve(self, t: _Tenant, op: Reserve, now: int) -> ReserveOutcome:
        if not op.dry_run:
            if op.idempotency_key is not None:
                replay = self._replay(t, "reserve", op.idempotency_key, op.fingerprint, now)
                if replay is not None:
                    return replay  # type: ignore[no-any-return]
            if op.default_plan is not None and t.plan is None and not t.definitions:
                self._apply_plan(t, op.default_plan, now)  # a tenant seen for the first time
        shadow = (t.mode or ("shadow" if op.shadow else "enforce")) == "shadow"
        ev = self._evaluate(t, op, now, shadow)
        if op.dry_run:
            return ReserveOutcome(ev.denial or self._allowed(ev.caps), None,
                                  _snapshot(ev.states))
        if ev.denial is not None and not shadow:
            self._denied(t, op, ev.denial, now)
            return ReserveOutcome(ev.denial, None, _snapshot(ev.states))
        for key, d, state in ev.states:
            state.reserved += ev.estimate[d.unit]
            state.touched_ms = now
            t.ledgers[key] = state
        for calls in ev.calls:
            t.calls[calls] = t.calls.get(calls, 0) + 1
        for rule_key, window, run in ev.runs:
            t.runs.setdefault((rule_key, window), set()).add(run)
        for rule_key in ev.concurrency:
            t.active[rule_key] = t.active.get(rule_key, 0) + 1
        res = _Reservation(new_id(op.tenant), op.subject, op.action, ev.estimate,
                           _amounts(_ordered(ev.estimate)),
                           [(key, d) for key, d, _ in ev.states], ev.scopes, t.epoch, now,
                           now + op.ttl_ms, op.grace_ms, op.max_extensions, op.overage_policy,
                           ev.concurrency, shadow)
        t.reservations[res.id] = res
        heapq.heappush(t.expiry, (res.deadline_ms, res.id))
        info = res.info()
        decision = self._allowed(ev.caps)
        scope = op.subject.scope_path
        if ev.denial is not None:  # shadow: what enforce mode would have said, on record
            decision = Decision(decision.outcome, decision.caps, observed=ev.denial)
            self._log(t, op.tenant, now, AuditType.OBSERVED_DENIED,
                      scopes=(ev.denial.scope or "",), subject=op.subject, action=op.action,
                      reservation_id=res.id, estimate=info.estimate, reason=ev.denial.reason)
            self._tally(t, now, scope, f"denials:observed:{ev.denial.reason}")
        outcome = ReserveOutcome(decision, info, _snapshot(ev.states))
        if op.idempotency_key is not None:
            self._remember(t, "reserve", op.idempotency_key, op.fingerprint, outcome, now)
        self._log(t, op.tenant, now, AuditType.RESERVED, scopes=info.scopes,
                  subject=op.subject, action=op.action, reservation_id=res.id,
                  idempotency_key=op.idempotency_key, estimate=info.estimate,
                  detail=_caps_detail(decision.caps))
        self._tally(t, now, scope, "reservations", ev.estimate, RESERVED)
        self._alerts(t, op.tenant, ev.states, now, res.id)
        return outcome

    def _evaluate(self, t: _Tenant, op: Reserve, now: int, shadow: bool) -> _Evaluation:
        """Access rules, then quotas, then budgets: the first refusal wins (in shadow mode
        evaluation goes on, since the reservation is made anyway)."""
        denial: Decision | None = None
        caps = policy.CapsBuilder()
        kind, name = op.action.kind, op.action.name
        if not t.access and not t.quotas:  # no rules at all: budgets only
            return self._fit(t, op, now, None, caps, [], [], [])
        for scope in op.scopes:
            rule = t.access.get(scope)
            if rule is None:
                continue
            reason = policy.access_refusal(rule, kind, name)
            if reason is not None and denial is None:
                denial = Decision(Outcome.DENY, reason=reason, scope=scope)
            if kind.startswith("llm."):
                caps.add_access(rule)
        calls: list[tuple[QuotaKey, str]] = []
        runs: list[tuple[QuotaKey, str, str]] = []
        concurrency: list[QuotaKey] = []
        run = dict(op.dimensions).get("run")
        for scope in op.scopes:
            for rule_key, quota in t.quotas.get(scope, {}).items():
                if not quota.applies_to(kind):
                    continue
                refusal = self._quota_refusal(t, quota, rule_key, run, now, calls, runs,
                                              concurrency)
                if refusal is not None and denial is None:
                    denial = refusal
        if denial is not None and not shadow:
            return _Evaluation(denial, (), [], {}, None, [], [], [])
        return self._fit(t, op, now, denial, caps, calls, runs, concurrency)

    def _quota_refusal(self, t: _Tenant, quota: policy.QuotaRule, key: QuotaKey,
                       run: str | None, now: int, calls: list[tuple[QuotaKey, str]],
                       runs: list[tuple[QuotaKey, str, str]],
                       concurrency: list[QuotaKey]) -> Decision | None:
        if quota.kind is policy.QuotaKind.CONCURRENT:
            used = t.active.get(key, 0)
            concurrency.append(key)
            if used < quota.limit:
                return None
            return Decision(Outcome.DENY, reason=Reason.CONCURRENCY_EXCEEDED, scope=quota.scope,
                            remaining=0, limit=quota.limit, requested=1)
        assert quota.window is not None
        window = bucket(quota.window, now)
        if quota.kind is policy.QuotaKind.CALLS:
            used = t.calls.get((key, window), 0)
            calls.append((key, window))
        else:
            if run is None:
                return None  # only runs are counted; a call outside a run is not one
            seen = t.runs.get((key, window), set())
            if run in seen:
                return None
            used = len(seen)
            runs.append((key, window, run))
        if used < quota.limit:
            return None
        return Decision(Outcome.DENY, reason=Reason.QUOTA_EXCEEDED, scope=quota.scope,
                        remaining=0, limit=quota.limit, requested=1,
                        retry_after_ms=bucket_end_ms(quota.window, now) - now)

    def _fit(self, t: _Tenant, op: Reserve, now: int, denial: Decision | None,
             caps: policy.CapsBuilder, calls: list[tuple[QuotaKey, str]],
             runs: list[tuple[QuotaKey, str, str]], concurrency: list[QuotaKey]
             ) -> _Evaluation:
        """Budgets: degrade rules cap first; an elastic estimate then shrinks to what fits,
        down to its floor, before a budget refuses."""
        fixed = dict(op.estimate)
        found = self._targets(t, op.scopes, op.dimensions, fixed, now)
        targets: list[tuple[LedgerKey, _Definition]] = []
        scopes: tuple[str, ...] = ()
        if found is None:
            denial = denial or Decision(Outcome.DENY, reason=Reason.BUDGET_NOT_FOUND,
                                        scope=op.scopes[-1])
        else:
            targets, scopes = found
        ledgers = t.ledgers
        states = []
        for key, d in targets:
            state = ledgers.get(key)
            if state is None or state.limit_seen != d.limit:
                state = self._ledger(t, key, d, now)
            states.append((key, d, state))
        for _, d, state in states:
            for rule in d.degrade:
                fraction = state.remaining / state.allocated if state.allocated > 0 else 0.0
                if fraction < rule.below:
                    caps.add(rule.caps(), severity=rule.below)
        elastic = op.elastic
        rates = dict(elastic.rates) if elastic else {}
        tokens = elastic.max_tokens if elastic else 0
        if elastic and caps.max_tokens is not None:
            tokens = min(tokens, caps.max_tokens)
        floor = min(elastic.floor, tokens) if elastic else 0

        def need(unit: Unit) -> int:
            return policy.elastic_amount(fixed[unit], rates.get(unit, 0), tokens)

        for key, d, state in states:
            amount = need(d.unit) if rates else fixed[d.unit]
            if (d.status is BudgetStatus.ACTIVE and not state.debt and not state.over_limit
                    and state.allocated - state.reserved - state.spent >= amount):
                continue  # fits: the common case, decided here without a call
            reason = ledger.reserve_refusal(state, d.status, d.overdraft_limit, amount)
            if reason == Reason.BUDGET_EXCEEDED and rates.get(d.unit):
                fits = policy.tokens_that_fit(state.remaining, fixed[d.unit], rates[d.unit])
                if fits >= floor:
                    tokens, reason = fits, None
            if reason is not None and denial is None:
                denial = ledger.denial(reason, key[0], d.unit, d.period, state, need(d.unit),
                                       now)
        if elastic and tokens < elastic.max_tokens:
            caps.max_tokens = tokens
        estimate = {unit: need(unit) for unit in fixed} if rates else fixed
        return _Evaluation(denial, scopes, states, estimate, caps.build(), calls, runs,
                           concurrency)

    @staticmethod
    def _allowed(caps: Caps | None) -> Decision:
        return ALLOW if caps is None else Decision(Outcome.ALLOW_WITH_CAPS, caps)

    def _denied(self, t: _Tenant, op: Reserve, decision: Decision, now: int) -> None:
        self._log(t, op.tenant, now, AuditType.DENIED, scopes=(decision.scope or "",),
                  subject=op.subject, action=op.action, idempotency_key=op.idempotency_key,
                  estimate=_amounts(op.estimate), reason=decision.reason,
                  detail={"remaining": decision.remaining, "limit": decision.limit})
        self._tally(t, now, op.subject.scope_path, f"denials:{decision.reason}")
        self._notes.append(Notification(
            NotificationType.RESERVATION_DENIED, op.tenant, now, scope=decision.scope,
            unit=decision.unit, reason=decision.reason, remaining=decision.remaining,
            allocated=decision.limit))

    def _commit(self, t: _Tenant, op: Commit, now: int) -> CommitResult:
        res = t.reservations.get(op.reservation_id) or self._reservation(t, op.reservation_id)
        if op.idempotency_key and res.commit and res.commit[0] == op.idempotency_key:
            replayed: CommitResult = _replayed(res.commit[1:], op.fingerprint,
                                               op.idempotency_key, "commit")
            return replayed
        if res.status is not ReservationStatus.ACTIVE or now > res.expires_at_ms + res.grace_ms:
            self._require_active(t, op.tenant, res, now, grace=True)
        given = dict(op.actual)
        if not given.keys() <= res.estimate.keys():
            unknown = sorted(u.value for u in given.keys() - res.estimate.keys())
            raise UnitMismatch(f"commit: {unknown} not in the reservation's estimate "
                               f"{sorted(u.value for u in res.estimate)}")
        # in the estimate's (unit) order; a unit left out is charged as estimated
        actual = given if len(given) == len(res.estimate) else {
            unit: given.get(unit, held) for unit, held in res.estimate.items()}
        changed = self._held(t, res, now)
        if ledger.within(res.estimate, actual):
            ledger.settle_within(changed, res.estimate, actual, now)
            charged = actual
        else:
            charged = ledger.apply(self._settlement(changed, res.estimate, actual,
                                                    res.overage_policy, now,
                                                    release_reserved=True, shadow=res.shadow),
                                   now)
        for key, _, state in changed:
            t.ledgers[key] = state
        released = tuple([(u, max(0, held - charged[u])) for u, held in res.estimate.items()])
        charged_units = _ordered(charged)
        charged_amounts = _amounts(charged_units)
        result = CommitResult(res.id, ReservationStatus.COMMITTED, charged_amounts,
                              _amounts(released), _snapshot(changed))
        self._finish(t, res, ReservationStatus.COMMITTED, now, charged_units)
        if op.idempotency_key:
            res.commit = (op.idempotency_key, op.fingerprint, result)
        self._log(t, op.tenant, now, AuditType.COMMITTED, scopes=res.scopes,
                  reservation_id=res.id, idempotency_key=op.idempotency_key,
                  estimate=res.estimate_amounts,
                  actual=charged_amounts if actual == charged else _amounts(_ordered(actual)),
                  charged=charged_amounts)
        self._tally(t, now, res.subject.scope_path, "commits", charged, COMMITTED)
        self._alerts(t, op.tenant, changed, now, res.id)
        return result

    def _release(self, t: _Tenant, op: Release, now: int) -> ReleaseResult:
        res = self._reservation(t, op.reservation_id)
        if op.idempotency_key and res.release and res.release[0] == op.idempotency_key:
            again: ReleaseResult = _replayed(res.release[1:], op.fingerprint,
                                             op.idempotency_key, "release")
            return again
        self._require_active(t, op.tenant, res, now, grace=True)
        balances = self._return_estimate(t, res, now)
        result = ReleaseResult(res.id, ReservationStatus.RELEASED,
                               res.estimate_amounts, balances)
        self._finish(t, res, ReservationStatus.RELEASED, now)
        if op.idempotency_key:
            res.release = (op.idempotency_key, op.fingerprint, result)
        self._log(t, op.tenant, now, AuditType.RELEASED, scopes=res.scopes,
                  reservation_id=res.id, idempotency_key=op.idempotency_key,
                  estimate=result.released, detail={"reason": op.reason})
        self._tally(t, now, res.subject.scope_path, "releases")
        return result

    def _extend(self, t: _Tenant, op: Extend, now: int) -> ExtendResult:
        res = self._reservation(t, op.reservation_id)
        seen = res.extends.get(op.idempotency_key) if op.idempotency_key and res.extends else None
        if seen is not None:
            extended: ExtendResult = _replayed(seen, op.fingerprint, op.idempotency_key,
                                               "extension")
            return extended
        self._require_active(t, op.tenant, res, now, grace=False)
        if res.extensions >= res.max_extensions:
            raise MaxExtensionsExceeded(f"reservation {res.id} was extended {res.extensions} "
                                        "times, the most allowed")
        res.expires_at_ms += op.by_ms
        res.extensions += 1
        heapq.heappush(t.expiry, (res.deadline_ms, res.id))
        result = ExtendResult(res.id, res.expires_at_ms, res.extensions)
        if op.idempotency_key:
            if res.extends is None:
                res.extends = {}
            res.extends[op.idempotency_key] = (op.fingerprint, result)
        self._log(t, op.tenant, now, AuditType.EXTENDED, reservation_id=res.id,
                  idempotency_key=op.idempotency_key,
                  detail={"by_ms": op.by_ms, "expires_at_ms": res.expires_at_ms})
        return result

    def _record(self, t: _Tenant, op: Record, now: int) -> RecordResult:
        replay = self._replay(t, "record", op.idempotency_key, op.fingerprint, now)
        if replay is not None:
            return replay  # type: ignore[no-any-return]
        actual = dict(op.actual)
        shadow = (t.mode or ("shadow" if op.shadow else "enforce")) == "shadow"
        found = self._targets(t, op.scopes, op.dimensions, actual, now)
        if found is None:
            raise Denied(Decision(Outcome.DENY, reason=Reason.BUDGET_NOT_FOUND,
                                  scope=op.scopes[-1]))
        targets, scopes = found
        for key, d in targets:  # records pass debt and over-limit, never a frozen budget
            if d.status is not BudgetStatus.ACTIVE and not shadow:
                reason = (Reason.BUDGET_FROZEN if d.status is BudgetStatus.FROZEN
                          else Reason.BUDGET_CLOSED)
                raise BudgetExceeded(ledger.denial(reason, key[0], d.unit, d.period,
                                                   self._ledger(t, key, d, now),
                                                   actual[d.unit], now))
        changed = [(key, d, self._ledger(t, key, d, now)) for key, d in targets]
        charged = ledger.apply(self._settlement(changed, dict.fromkeys(actual, 0), actual,
                                                op.overage_policy, now, release_reserved=False,
                                                shadow=shadow), now)
        for key, _, state in changed:
            t.ledgers[key] = state
        result = RecordResult(new_id(op.tenant), _amounts(in_unit_order(charged)),
                              _snapshot(changed))
        self._remember(t, "record", op.idempotency_key, op.fingerprint, result, now)
        self._log(t, op.tenant, now, AuditType.RECORDED,
                  scopes=scopes, subject=op.subject,
                  action=op.action, idempotency_key=op.idempotency_key,
                  actual=_amounts(op.actual), charged=result.charged)
        self._tally(t, now, op.subject.scope_path, "records", charged, COMMITTED)
        self._alerts(t, op.tenant, changed, now, None)
        return result

    # -- reads ----------------------------------------------------------------------------

    def _get(self, t: _Tenant, op: Get, now: int) -> ReservationInfo:
        return self._reservation(t, op.reservation_id).info()

    def _balances(self, t: _Tenant, op: Balances, now: int) -> tuple[Balance, ...]:
        path = parse_scope(op.scope)
        below = op.scope + "/" if op.include_children else None
        result: list[Balance] = []
        for scope in sorted(t.definitions):
            if scope != path.base and not (below and scope.startswith(below)):
                continue
            for d in t.definitions[scope].values():
                current = bucket(d.period, now)
                if d.per is None:
                    keys: Iterator[LedgerKey] = iter(
                        () if path.dimension else ((scope, d.unit, d.period, current),))
                elif path.dimension or below:
                    keys = iter(sorted(k for k in self._dimension_ledgers(t, d, current)
                                       if path.dimension is None or k[0] == path.path))
                else:
                    continue
                result += [_balance(k, self._ledger(t, k, d, now), d) for k in keys]
        return tuple(result)

    def _audit(self, t: _Tenant, op: Audit, now: int) -> tuple[AuditRecord, ...]:
        found = [_audit_record(r) for r in reversed(t.audit)
                 if (op.since_ms is None or r[1] >= op.since_ms)
                 and (op.types is None or r[2] in op.types)]
        return tuple(reversed(found[: op.limit]))

    def _report(self, t: _Tenant, op: Report, now: int) -> tuple[ReportRow, ...]:
        return report_rows(t.report, op.period, op.at_ms if op.at_ms is not None else now)

    # -- maintenance ----------------------------------------------------------------------

    def _sweep(self, op: Sweep, now: int) -> int:
        expired = 0
        for name, t in self._tenants.items():
            expired += self._reap(t, name, now, op.limit - expired)
            self._prune(t, now)
        return expired

    def _reap(self, t: _Tenant, tenant: str, now: int, limit: int) -> int:
        """Expire up to `limit` reservations whose ttl and grace have passed."""
        expired = 0
        while t.expiry and t.expiry[0][0] < now and expired < limit:
            _, rid = heapq.heappop(t.expiry)
            res = t.reservations.get(rid)
            if res is None or res.status is not ReservationStatus.ACTIVE:
                continue
            if res.deadline_ms >= now:
                continue  # extended since: a later entry stands in the heap
            self._expire(t, tenant, res, now)
            expired += 1
        return expired

    def _prune(self, t: _Tenant, now: int) -> None:
        """Drop finished reservations, idempotency records, idle dimension ledgers and quota
        windows that have closed."""
        for rid, res in list(t.reservations.items()):
            if res.finalized_at_ms is not None and (
                    res.finalized_at_ms + self.finished_retention_ms < now):
                del t.reservations[rid]
        for key, record in list(t.idempotency.items()):
            if record.expires_at_ms < now:
                del t.idempotency[key]
        templates = {(d.scope, d.unit, d.period) for defs in t.definitions.values()
                     for d in defs.values() if d.per is not None}
        for lkey, state in list(t.ledgers.items()):
            idle = state.touched_ms + self.dimension_idle_ttl_ms < now
            base = lkey[0].rsplit("/", 1)[0]
            if idle and state.reserved == 0 and (base, lkey[1], lkey[2]) in templates:
                del t.ledgers[lkey]
        for window in [w for w in t.calls if w[1] != bucket(w[0][2], now)]:
            del t.calls[window]
        for window in [w for w in t.runs if w[1] != bucket(w[0][2], now)]:
            del t.runs[window]

    # -- helpers --------------------------------------------------------------------------

    def _targets(self, t: _Tenant, scopes: tuple[str, ...],
                 dimensions: tuple[tuple[str, str], ...], units: dict[Unit, int],
                 now: int) -> tuple[list[tuple[LedgerKey, _Definition]], tuple[str, ...]] | None:
        """The current ledgers a subject charges in these units, and their scope paths."""
        memo = (scopes, dimensions, *units)
        route = t.routes.get(memo)
        if route is None:
            route = self._route(t, scopes, dimensions, units)
            if route is None:
                return None
            if len(t.routes) >= ROUTE_CACHE:
                t.routes.clear()
            t.routes[memo] = route
        return ([((path, unit, period, bucket(period, now)), d)
                 for path, unit, period, d in route.ledgers], route.scopes)

    @staticmethod
    def _route(t: _Tenant, scopes: tuple[str, ...], dimensions: tuple[tuple[str, str], ...],
               units: dict[Unit, int]) -> _Route | None:
        """The ledgers a subject charges in these units, in canonical order; None when no
        budget applies to the subject at all. Raises `UnitMismatch` when budgets apply but
        none in these units."""
        dims = dict(dimensions)
        applicable = 0
        found = []
        for scope in scopes:
            for d in t.definitions.get(scope, {}).values():
                if d.per is None:
                    path = scope
                elif d.per in dims:
                    path = f"{scope}/{d.per}:{dims[d.per]}"
                else:
                    continue
                applicable += 1
                if d.unit in units:
                    found.append((path, d.unit, d.period, d))
        if found:
            return _Route(tuple(found), tuple(dict.fromkeys(row[0] for row in found)))
        if applicable:
            held = sorted({d.unit.value for s in scopes for d in t.definitions.get(s, {}).values()})
            raise UnitMismatch(f"no budget of {scopes[-1]} is in "
                               f"{sorted(u.value for u in units)}; its budgets hold {held}")
        return None

    def _ledger(self, t: _Tenant, key: LedgerKey, d: _Definition, now: int) -> ledger.Ledger:
        """The ledger at `key`; a new one (not yet stored) when never touched."""
        state = t.ledgers.get(key)
        if state is None:
            return ledger.Ledger(allocated=d.limit, limit_seen=d.limit, touched_ms=now)
        if state.limit_seen != d.limit and key[3] == bucket(d.period, now):
            state.follow_limit(d.limit)
        return state

    def _locate(self, t: _Tenant, scope: str, unit: Unit, period: Any,
                now: int) -> tuple[LedgerKey, _Definition]:
        """The current ledger of the one budget at `scope` in `unit` (and `period`)."""
        path = parse_scope(scope)
        per = path.dimension[0] if path.dimension else None
        found = [d for d in t.definitions.get(path.base, {}).values()
                 if d.unit is unit and d.per == per and (period is AUTO or d.period == period)]
        if not found:
            raise NotFound(f"no budget at {scope} in {unit.value}"
                           + ("" if period is AUTO else f" for period {period}"))
        if len(found) > 1:
            periods = [d.period.value if d.period else None for d in found]
            raise InvalidRequest(f"{scope} has {unit.value} budgets for periods {periods}; "
                                 "say which with period=")
        d = found[0]
        return (path.path, unit, d.period, bucket(d.period, now)), d

    def _held(self, t: _Tenant, res: _Reservation, now: int
              ) -> list[tuple[LedgerKey, _Definition, ledger.Ledger]]:
        """The ledgers a reservation holds, with their current definitions."""
        if res.epoch == t.epoch:
            return [(key, d, self._ledger(t, key, d, now)) for key, d in res.ledgers]
        held = []
        for key, d in res.ledgers:
            d = _definition(t, d.key)
            held.append((key, d, self._ledger(t, key, d, now)))
        return held

    @staticmethod
    def _settlement(states: list[tuple[LedgerKey, _Definition, ledger.Ledger]],
                    estimate: dict[Unit, int], actual: dict[Unit, int],
                    policy_: OveragePolicy | None, now: int, release_reserved: bool,
                    shadow: bool) -> ledger.Settlement:
        """Settle a charge on these ledgers; in shadow mode nothing is refused and any
        overage beyond a budget is tracked as debt, so the spend stays visible."""
        if shadow:
            rows = [(key, _unlimited(d), state, OveragePolicy.ALLOW_WITH_OVERDRAFT)
                    for key, d, state in states]
        else:
            rows = [(key, d, state, policy_ or d.overage_policy) for key, d, state in states]
        return ledger.settle(rows, estimate, actual, release_reserved, now)

    def _return_estimate(self, t: _Tenant, res: _Reservation, now: int) -> tuple[Balance, ...]:
        balances = []
        for key, d, state in self._held(t, res, now):
            t.ledgers[key] = state
            state.reserved -= res.estimate[key[1]]
            state.touched_ms = now
            balances.append(_balance(key, state, d))
        return tuple(balances)

    def _expire(self, t: _Tenant, tenant: str, res: _Reservation, now: int) -> None:
        self._return_estimate(t, res, now)
        self._finish(t, res, ReservationStatus.EXPIRED, now)
        self._log(t, tenant, now, AuditType.EXPIRED, scopes=res.scopes,
                  reservation_id=res.id, estimate=res.estimate_amounts)
        self._tally(t, now, res.subject.scope_path, "expiries")

    def _reservation(self, t: _Tenant, rid: str) -> _Reservation:
        res = t.reservations.get(rid)
        if res is None:
            raise NotFound(f"no reservation {rid} (never made, or past its retention)")
        return res

    def _require_active(self, t: _Tenant, tenant: str, res: _Reservation, now: int,
                        grace: bool) -> None:
        if res.status is ReservationStatus.EXPIRED:
            raise ReservationExpired(f"reservation {res.id} expired; its estimate went back "
                                     "to the budgets (charge the spend with record())")
        if res.status is not ReservationStatus.ACTIVE:
            raise ReservationFinalized(f"reservation {res.id} is already {res.status.value}")
        if now > res.deadline_ms:
            self._expire(t, tenant, res, now)
        if now > (res.deadline_ms if grace else res.expires_at_ms):
            raise ReservationExpired(f"reservation {res.id} expired at {res.expires_at_ms} ms")

    @staticmethod
    def _finish(t: _Tenant, res: _Reservation, status: ReservationStatus, now: int,
                charged: Units = ()) -> None:
        res.status, res.finalized_at_ms, res.charged = status, now, charged
        for key in res.concurrency:
            t.active[key] = max(0, t.active.get(key, 0) - 1)
        # A finished reservation is kept only to answer get() and replays: drop what the
        # collector would otherwise walk for a day.
        res.ledgers, res.concurrency = _EMPTY, _EMPTY

    def _replay(self, t: _Tenant, kind: str, key: str | None, fingerprint: str,
                now: int) -> Any:
        if key is None:
            return None
        record = t.idempotency.get((kind, key))
        if record is None or record.expires_at_ms < now:
            return None
        return _replayed((record.fingerprint, record.result), fingerprint, key, kind)

    def _remember(self, t: _Tenant, kind: str, key: str | None, fingerprint: str,
                  result: Any, now: int) -> None:
        if key is not None:
            t.idempotency[(kind, key)] = _Idempotent(fingerprint, result,
                                                     now + self.idempotency_ttl_ms)

    def _log(self, t: _Tenant, tenant: str, now: int, kind: str, *,
             subject: Subject | None = None, action: Action | None = None,
             **fields: Any) -> None:
        t.seq += 1
        t.audit.append((t.seq, now, kind, tenant, subject, action, fields))
        if len(t.audit) > self.audit_retention:
            t.audit.popleft()

    @staticmethod
    def _tally(t: _Tenant, now: int, scope: str, event: str,
               amounts: dict[Unit, int] | None = None,
               names: dict[Unit, str] | None = None) -> None:
        """Count one `event`, and `amounts` under their unit's counter `names`. Report
        counters are kept as `day|subject scope|counter` (the Redis store's form)."""
        memo = (now // 60_000, scope)
        prefix = t.tally_prefix.get(memo)
        if prefix is None:
            if len(t.tally_prefix) > 1024:
                t.tally_prefix.clear()
            prefix = t.tally_prefix[memo] = f"{bucket(Period.DAY, now)}|{scope}|"
        report = t.report
        key = prefix + event
        report[key] = report.get(key, 0) + 1
        if amounts and names:
            for unit, by in amounts.items():
                key = prefix + names[unit]
                report[key] = report.get(key, 0) + by

    def _alerts(self, t: _Tenant, tenant: str,
                changed: Iterable[tuple[LedgerKey, _Definition, ledger.Ledger]], now: int,
                rid: str | None) -> None:
        for key, d, state in changed:
            if (state.reserved + state.spent + state.debt < state.quiet_below
                    and not state.over_limit and state.quiet_allocated == state.allocated
                    and state.quiet_alerts is d.alerts):
                continue  # below the next threshold, as computed for this allocation
            self._alert(t, tenant, key, d, state, now, rid)

    def _alert(self, t: _Tenant, tenant: str, key: LedgerKey, d: _Definition,
               state: ledger.Ledger, now: int, rid: str | None) -> None:
        """Threshold, exhaustion and over-limit notifications, once per crossing."""
        allocated, crossed = state.allocated, state.alerted
        used = state.reserved + state.spent + state.debt
        if not state.over_limit and used < allocated and (
                crossed >= len(d.alerts)
                or used * 1_000_000 < round(d.alerts[crossed] * 1_000_000) * allocated):
            state.over_notified = False
            # The common case: nothing to send. Note how far usage may go before the next
            # threshold (or exhaustion), so `_alerts` can skip this call until then.
            due = allocated if crossed >= len(d.alerts) else min(
                allocated, -(-round(d.alerts[crossed] * 1_000_000) * allocated // 1_000_000))
            state.quiet_below, state.quiet_allocated, state.quiet_alerts = (
                due, allocated, d.alerts)
            return
        state.quiet_allocated = -1  # past a threshold or over the limit: check every time
        remaining = state.remaining
        if allocated <= 0:
            return
        thresholds = d.alerts  # sorted when set
        crossed = state.alerted
        if crossed < len(thresholds):
            used = (allocated - remaining) * 1_000_000
            while crossed < len(thresholds) and (
                    used >= round(thresholds[crossed] * 1_000_000) * allocated):
                crossed += 1
        exhausted = remaining <= 0 and not state.exhausted
        over = state.over_limit and not state.over_notified
        state.over_notified = state.over_limit
        if crossed == state.alerted and not exhausted and not over:
            return

        def note(kind: str, threshold: float | None = None) -> None:
            self._notes.append(Notification(
                kind, tenant, now, scope=key[0], unit=key[1], bucket=key[3],
                threshold=threshold, remaining=remaining, allocated=allocated,
                reservation_id=rid))

        for index in range(state.alerted, crossed):
            note(NotificationType.THRESHOLD_CROSSED, thresholds[index])
        state.alerted = crossed
        if exhausted:
            state.exhausted = True
            note(NotificationType.EXHAUSTED)
            self._tally(t, now, parse_scope(key[0]).base, "exhaustions")
        if over:
            note(NotificationType.OVER_LIMIT_ENTERED)


    @staticmethod
    def _dimension_ledgers(t: _Tenant, d: _Definition, current: str) -> Iterator[LedgerKey]:
        prefix = f"{d.scope}/{d.per}:"
        for key in t.ledgers:
            if (key[1] is d.unit and key[2] == d.period and key[3] == current
                    and key[0].startswith(prefix) and "/" not in key[0][len(prefix):]):
                yield key


def _audit_record(entry: AuditEntry) -> AuditRecord:
    """An audit record, built when read (the write path keeps a plain tuple)."""
    seq, at, kind, tenant, subject, action, fields = entry
    return AuditRecord(seq, at, kind, tenant, subject=subject,
                       action=None if action is None else f"{action.kind} {action.name}",
                       **fields)


def _redefined(t: _Tenant) -> None:
    """A definition was added or removed: cached routes and held definitions are stale."""
    t.epoch += 1
    t.routes.clear()


def _definition(t: _Tenant, key: DefKey) -> _Definition:
    """A reservation's budget definition, or a neutral stand-in if it was removed since."""
    d = t.definitions.get(key[0], {}).get(key)
    if d is None:
        d = _Definition(*key, limit=0, overdraft_limit=0,
                        overage_policy=OveragePolicy.ALLOW_IF_AVAILABLE)
    return d


def _unlimited(d: _Definition) -> _Definition:
    """Shadow mode settles every overage as debt: spend is tracked, never refused."""
    return _Definition(d.scope, d.unit, d.period, d.per, d.limit, 2**62,
                       OveragePolicy.ALLOW_WITH_OVERDRAFT, d.degrade, d.alerts, d.status)


def _replayed(stored: tuple[str, Any], fingerprint: str, key: str | None, kind: str) -> Any:
    """The stored result of an idempotent call, if the payload is the same."""
    if stored[0] != fingerprint:
        raise IdempotencyMismatch(f"idempotency key {key!r} was used for a different "
                                  f"{kind} request")
    return stored[1]


def _balance(key: LedgerKey, state: ledger.Ledger, d: _Definition) -> Balance:
    return Balance(key[0], key[1], key[2].value if key[2] else None, key[3], state.allocated,
                   state.reserved, state.spent, state.debt, d.overdraft_limit, state.over_limit,
                   d.status)


def _snapshot(states: list[tuple[LedgerKey, _Definition, ledger.Ledger]]
              ) -> Callable[[], tuple[Balance, ...]]:
    """These ledgers' balances as they are now, built into `Balance` rows when read."""
    rows = [(key, state.allocated, state.reserved, state.spent, state.debt,
             d.overdraft_limit, state.over_limit, d.status) for key, d, state in states]
    return partial(_snapshot_balances, rows)


def _snapshot_balances(rows: list[tuple[Any, ...]]) -> tuple[Balance, ...]:
    return tuple(Balance(key[0], key[1], _name(key[2]), key[3], *values)
                 for key, *values in rows)


def _ordered(by_unit: dict[Unit, int]) -> Units:
    """Amounts by unit from a dict built in unit order, as every estimate is (operations
    carry their units in that order) and so every dict made by walking one."""
    return tuple(by_unit.items())


_amount_cache: dict[tuple[Unit, int], Amount] = {}


def _amounts(units: Units) -> tuple[Amount, ...]:
    """Amounts are immutable, and estimates repeat: share the objects of recent values."""
    found = []
    for pair in units:
        made = _amount_cache.get(pair)
        if made is None:
            if len(_amount_cache) >= 4096:
                _amount_cache.clear()
            made = _amount_cache[pair] = Amount.trusted(*pair)
        found.append(made)
    return tuple(found)


def _name(period: Period | None) -> str | None:
    return None if period is None else period.value


def _caps_detail(caps: Caps | None) -> dict[str, Any]:
    if caps is None:
        return {}
    return {"caps": {k: v for k in Caps.__slots__ if (v := getattr(caps, k)) is not None}}
