"""Reserve (and decide, with dry_run), as reserve.lua: access rules, then quotas, then budgets;
the first refusal wins. In shadow mode evaluation goes on and the reservation is made anyway."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from ... import ledger, policy
from ...amounts import Amount, Unit
from ...events import AuditType, Notification, NotificationType
from ...models import (
    BudgetStatus,
    Caps,
    Decision,
    Outcome,
    Reason,
    ReservationInfo,
    ReservationStatus,
)
from ...periods import bucket, bucket_end_ms
from ...reports import report_scopes
from ...validation import MAX_AMOUNT
from ..operations import Reserve, ReserveOutcome, checked_amounts
from .definitions import apply_plan
from .state import (
    ALLOWED,
    RESERVED,
    Definition,
    Figures,
    Held,
    LeanReserve,
    LedgerKey,
    QuotaKey,
    Reservation,
    Route,
    Tenant,
    amounts,
    count,
    count_usage,
    held_balances,
    ledger_at,
    log,
    missing_dimensions,
    ordered,
    period_name,
    remember,
    replay,
    shared_amounts,
    snapshot,
    tally,
    targets,
)
from .sweep import Overdue, overdue

_ACTIVE = BudgetStatus.ACTIVE
_HELD = ReservationStatus.ACTIVE
_RESERVED = AuditType.RESERVED
_NO_SLOTS: list[QuotaKey] = []  # never appended to: a reservation without concurrency slots


@dataclass
class _Evaluation:
    """Everything a reservation would do, worked out before anything is written."""

    denial: Decision | None
    scopes: tuple[str, ...]
    states: Held
    estimate: dict[Unit, int]
    caps: Caps | None
    calls: list[tuple[QuotaKey, str]]
    runs: list[tuple[QuotaKey, str, str]]
    concurrency: list[QuotaKey]
    why: dict[str, Any] | None = None
    """What a denial's record says beyond the decision: the budget's period, or the quota's
    kind and window."""
    requested: dict[Unit, int] | None = None
    """The whole estimate when a budget refused, at the output size evaluated then (None:
    the call's own estimate, at its own max_tokens)."""
    tokens: int | None = None
    """The output tokens of an elastic estimate evaluated when a budget refused."""
    route: Route | None = None


def reserve(t: Tenant, op: Reserve, now: int) -> ReserveOutcome:
    """Hold an estimate on every ledger the subject charges, or say why not.

    The usual reservation is made here, without the general evaluation (`_reserve`): a
    tenant without access rules, quotas or required dimensions in enforce mode, a fixed
    estimate in one unit, a key not seen before (or none), and every ledger already there,
    active, clear of debt, without degrade rules and with room. It writes and answers
    exactly what the general path would, a new key's record for replays included; when any
    of that does not hold, the general path decides (nothing written yet): a key already
    kept replays there, or is refused for a different request.
    """
    fixed = op.estimate
    key = op.idempotency_key
    route = None
    if (len(fixed) == 1 and (key is None or ("reserve", key) not in t.idempotency)
            and not op.dry_run and t.closed_at_ms is None
            and op.elastic is None and not t.access and not t.quotas and not t.required
            and (t.mode == "enforce" or (t.mode is None and not op.shadow))
            and (op.default_plan is None or t.plan is not None or t.definitions)):
        unit, amount = fixed[0]
        route = t.routes.get((op.scopes, op.dimensions, unit))
    if (route is None or not 0 <= amount <= MAX_AMOUNT
            or (ready := route.ready(t, now)) is None):
        return _reserve(t, op, now)
    current, states, terms = ready
    for state in states:
        if (state.debt or state.over_limit
                or state.allocated - state.reserved - state.spent < amount):
            return _reserve(t, op, now)
    figures = []  # the balances as the answer shows them, read in the loop that writes
    for state in states:
        state.reserved += amount
        state.touched_ms = now
        figures.append((state.allocated, state.reserved, state.spent, state.debt,
                        state.over_limit))
    rid = t.cx.ids.new(op.tenant)
    held = shared_amounts(fixed) or amounts(fixed)
    estimate = {unit: amount}
    expires = now + op.ttl_ms
    t.reservations[rid] = res = Reservation(
        rid, op.subject, op.action, estimate, held, current, route.scopes, t.epoch, now,
        expires, op.grace_ms, op.max_extensions, op.overage_policy, _NO_SLOTS, False,
        _HELD, 0, (), None, None, None, None, route.report, route.on_commit, states,
        t.cx.generation, terms)
    heapq.heappush(t.expiry, (expires + op.grace_ms, rid))
    info = ReservationInfo(rid, op.tenant, _HELD, op.subject, op.action, held, route.scopes,
                           now, expires, op.grace_ms, 0, op.overage_policy)
    shown: Sequence[Figures] = figures
    if key is not None:  # kept as the values the answer is built from (see `Kept`)
        shown = tuple(figures)
        t.idempotency[("reserve", key)] = LeanReserve(
            key, op.fingerprint, res, now + t.cx.idempotency_ttl_ms, current, shown, terms)
    outcome = ReserveOutcome(ALLOWED, info, partial(held_balances, current, shown, terms))
    t.seq += 1
    t.listing.append((t.seq, rid))
    t.audit.append((t.seq, now, _RESERVED, t.name, op.subject, op.action,
                    (route.scopes, rid, key, held)))
    count(t, now, route.on_reserve, estimate)
    return outcome


def _reserve(t: Tenant, op: Reserve, now: int) -> ReserveOutcome:
    """Reserve in general: idempotency, a default plan, shadow mode, rules, quotas and
    elastic estimates, and every refusal."""
    if not op.dry_run and op.idempotency_key is not None:
        replayed = replay(t, "reserve", op.idempotency_key, op.fingerprint, now)
        if replayed is not None:
            return replayed  # type: ignore[no-any-return]
    if t.closed_at_ms is not None:
        return _closed(t, op, now)
    if not op.dry_run and op.default_plan is not None and t.plan is None and not t.definitions:
        apply_plan(t, op.default_plan, now)  # a tenant seen for the first time
    shadow = (t.mode or ("shadow" if op.shadow else "enforce")) == "shadow"
    back = None
    if op.dry_run and t.expiry and t.expiry[0][0] < now:
        back = overdue(t, now, t.cx.reap_batch)  # what reserve would have reaped first
    ev = _evaluate(t, op, now, shadow, back)
    checked_amounts(ev.estimate, "estimate")
    if op.dry_run:
        return ReserveOutcome(ev.denial or _allowed(ev.caps), None, snapshot(ev.states))
    if ev.denial is not None and not shadow:
        _denied(t, op, ev, now)
        return ReserveOutcome(ev.denial, None, snapshot(ev.states))
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
    res = Reservation(t.cx.ids.new(op.tenant), op.subject, op.action, ev.estimate,
                      amounts(ordered(ev.estimate)),
                      [(key, d) for key, d, _ in ev.states], ev.scopes, t.epoch, now,
                      now + op.ttl_ms, op.grace_ms, op.max_extensions, op.overage_policy,
                      ev.concurrency, shadow,
                      report=None if ev.route is None else ev.route.report)
    t.reservations[res.id] = res
    heapq.heappush(t.expiry, (res.deadline_ms, res.id))
    info = res.info()
    decision = _allowed(ev.caps)
    scope = op.subject.scope_path
    if ev.denial is not None:  # shadow: what enforce mode would have said, on record
        decision = Decision(decision.outcome, decision.caps, observed=ev.denial)
        log(t, now, AuditType.OBSERVED_DENIED, scopes=(ev.denial.scope or "",),
            subject=op.subject, action=op.action, reservation_id=res.id,
            estimate=_requested(op, ev), reason=ev.denial.reason,
            detail=_denial_detail(op, ev, ev.denial))
        tally(t, now, (ev.denial.scope or scope,), f"denials:observed:{ev.denial.reason}")
    outcome = ReserveOutcome(decision, info, snapshot(ev.states))
    if op.idempotency_key is not None:
        remember(t, "reserve", op.idempotency_key, op.fingerprint, outcome, now)
    log(t, now, AuditType.RESERVED, scopes=info.scopes, subject=op.subject, action=op.action,
        reservation_id=res.id, idempotency_key=op.idempotency_key, estimate=info.estimate,
        detail=_caps_detail(decision.caps))
    t.listing.append((t.seq, res.id))
    if ev.route is not None:
        count(t, now, ev.route.counters("reservations", RESERVED), ev.estimate)
    else:
        tally(t, now, report_scopes(op.subject), "reservations", ev.estimate, RESERVED)
    # no alerts: a hold is not spend (they follow commits and records, see state.alerts)
    return outcome


def _evaluate(t: Tenant, op: Reserve, now: int, shadow: bool,
              back: Overdue | None) -> _Evaluation:
    """Required dimensions, access rules, then quotas, then budgets: the first refusal wins
    (in shadow mode evaluation goes on, since the reservation is made anyway). `back`: what
    a dry run counts as given back by the reservations it did not reap."""
    denial = missing_dimensions(t, op.scopes, op.dimensions)
    why: dict[str, Any] | None = None
    if denial is not None and not shadow:
        return _Evaluation(denial, (), [], {}, None, [], [], [])
    caps = policy.CapsBuilder()
    kind, name = op.action.kind, op.action.name
    if not t.access and not t.quotas:  # no rules at all: budgets only
        return _fit(t, op, now, denial, why, caps, [], [], [], back, shadow)
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
            refusal = _quota_refusal(t, quota, rule_key, run, now, calls, runs, concurrency,
                                     back)
            if refusal is not None and denial is None:
                denial = refusal
                why = {"quota": quota.kind.value, "window": period_name(quota.window)}
    if denial is not None and not shadow:
        return _Evaluation(denial, (), [], {}, caps.build(), [], [], [], why)
    return _fit(t, op, now, denial, why, caps, calls, runs, concurrency, back, shadow)


def _quota_refusal(t: Tenant, quota: policy.QuotaRule, key: QuotaKey, run: str | None,
                   now: int, calls: list[tuple[QuotaKey, str]],
                   runs: list[tuple[QuotaKey, str, str]],
                   concurrency: list[QuotaKey], back: Overdue | None) -> Decision | None:
    """Why one quota refuses this call, noting what the call would count under it."""
    if quota.kind is policy.QuotaKind.CONCURRENT:
        used = t.active.get(key, 0)
        if back is not None:
            used = max(0, used - back.slots.get(key, 0))
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


def _fit(t: Tenant, op: Reserve, now: int, denial: Decision | None,
         why: dict[str, Any] | None,
         caps: policy.CapsBuilder, calls: list[tuple[QuotaKey, str]],
         runs: list[tuple[QuotaKey, str, str]], concurrency: list[QuotaKey],
         back: Overdue | None, shadow: bool) -> _Evaluation:
    """Budgets: degrade rules cap first; an elastic estimate then shrinks to what fits, down
    to its floor, before a budget refuses."""
    fixed = dict(op.estimate)
    route = targets(t, op.scopes, op.dimensions, fixed)
    charged: tuple[tuple[LedgerKey, Definition], ...] = ()
    scopes: tuple[str, ...] = ()
    if route is None:
        denial = denial or Decision(Outcome.DENY, reason=Reason.BUDGET_NOT_FOUND,
                                    scope=op.scopes[-1])
    else:
        charged, scopes = route.current(now), route.scopes
    ledgers = t.ledgers
    states = []
    for key, d in charged:
        state = ledgers.get(key)
        if state is None or state.limit_seen != d.limit:
            state = ledger_at(t, key, d, now)
        if back is not None and key in back.held:  # a copy: a dry run writes nothing
            state = replace(state, reserved=state.reserved - back.held[key])
        states.append((key, d, state))
    provider = policy.provider_of(op.action.name) if states else None
    for _, d, state in states:
        for rule in d.degrade:
            fraction = state.remaining / state.allocated if state.allocated > 0 else 0.0
            if fraction < rule.below:  # a model only for calls to a provider it names
                caps.add(rule.caps(provider), severity=rule.below)
    elastic = op.elastic
    rates = dict(elastic.rates) if elastic else {}
    tokens = elastic.max_tokens if elastic else 0
    if elastic and caps.max_tokens is not None:
        tokens = min(tokens, caps.max_tokens)
    floor = min(elastic.floor, tokens) if elastic else 0

    def need(unit: Unit) -> int:
        return policy.elastic_amount(fixed[unit], rates.get(unit, 0), tokens)

    requested: dict[Unit, int] | None = None
    evaluated: int | None = None

    for key, d, state in states:
        amount = need(d.unit) if rates else fixed[d.unit]
        if (d.status is BudgetStatus.ACTIVE and not state.debt and not state.over_limit
                and state.allocated - state.reserved - state.spent >= amount):
            continue  # fits: the common case, decided here without a call
        reason = ledger.reserve_refusal(state, d.status, d.overdraft_limit, amount, shadow)
        if reason == Reason.BUDGET_EXCEEDED and rates.get(d.unit):
            fits = policy.tokens_that_fit(state.remaining, fixed[d.unit], rates[d.unit])
            if fits >= floor:
                tokens, reason = fits, None
        if reason is not None and denial is None:
            denial = ledger.denial(reason, key[0], d.unit, d.period, state, need(d.unit), now)
            why = {"period": period_name(d.period)}
            requested, evaluated = {unit: need(unit) for unit in fixed}, tokens
    if elastic and tokens < elastic.max_tokens:
        caps.max_tokens = tokens
    estimate = {unit: need(unit) for unit in fixed} if rates else fixed
    return _Evaluation(denial, scopes, states, estimate, caps.build(), calls, runs,
                       concurrency, why, requested, evaluated, route)


def _allowed(caps: Caps | None) -> Decision:
    return ALLOWED if caps is None else Decision(Outcome.ALLOW_WITH_CAPS, caps)


def _closed(t: Tenant, op: Reserve, now: int) -> ReserveOutcome:
    """A closed tenant's reservation is denied whatever its budgets say (a dry run's too,
    so that it tells what the live call would do); a live one goes on record."""
    decision = Decision(Outcome.DENY, reason=Reason.TENANT_CLOSED, scope=f"tenant:{t.name}")
    if not op.dry_run:
        log(t, now, AuditType.DENIED, scopes=(decision.scope or "",), subject=op.subject,
            action=op.action, idempotency_key=op.idempotency_key,
            estimate=amounts(ordered(dict(op.estimate))), reason=decision.reason)
        t.cx.notes.append(Notification(NotificationType.RESERVATION_DENIED, op.tenant, now,
                                       scope=decision.scope, reason=decision.reason))
    return ReserveOutcome(decision, None, ())


def _denied(t: Tenant, op: Reserve, ev: _Evaluation, now: int) -> None:
    """A refusal goes on record: audit, report tally and a notification."""
    decision = ev.denial
    assert decision is not None
    log(t, now, AuditType.DENIED, scopes=(decision.scope or "",), subject=op.subject,
        action=op.action, idempotency_key=op.idempotency_key, estimate=_requested(op, ev),
        reason=decision.reason, detail=_denial_detail(op, ev, decision))
    tally(t, now, (decision.scope or op.subject.scope_path,), f"denials:{decision.reason}")
    count_usage(t, now, now, op.subject.scope_path, op.action.name, 0, 1, None,
                ((unit, 0) for unit, _ in op.estimate))
    t.cx.notes.append(Notification(
        NotificationType.RESERVATION_DENIED, op.tenant, now, scope=decision.scope,
        unit=decision.unit, reason=decision.reason, remaining=decision.remaining,
        allocated=decision.limit))


def _requested(op: Reserve, ev: _Evaluation) -> tuple[Amount, ...]:
    """What a refused call asked for, per unit: the whole estimate, its elastic part at the
    output size a budget evaluated (or the call's own max_tokens when no budget did)."""
    requested = ev.requested
    if requested is None:
        requested = dict(op.estimate)
        if op.elastic is not None:
            rates = dict(op.elastic.rates)
            requested = {unit: policy.elastic_amount(amount, rates.get(unit, 0),
                                                     op.elastic.max_tokens)
                         for unit, amount in requested.items()}
    return amounts(ordered(requested))


def _denial_detail(op: Reserve, ev: _Evaluation, decision: Decision) -> dict[str, Any]:
    """Why a denial refused, in figures: the unit, the amount requested in it, the limit
    (allocation or quota) and what remained, the budget's period or the quota's kind and
    window, when it frees up, the output size evaluated and the caps on offer."""
    detail = dict(ev.why or ())
    if decision.unit is not None:
        detail["unit"] = decision.unit.value
    for name in ("requested", "limit", "remaining", "retry_after_ms"):
        value = getattr(decision, name)
        if value is not None:
            detail[name] = value
    if op.elastic is not None:
        detail["max_tokens"] = op.elastic.max_tokens if ev.tokens is None else ev.tokens
    if decision.missing_dimensions:  # DIMENSION_REQUIRED: the keys the subject lacked
        detail["missing_dimensions"] = list(decision.missing_dimensions)
    detail.update(_caps_detail(ev.caps))
    return detail


def _caps_detail(caps: Caps | None) -> dict[str, Any]:
    if caps is None:
        return {}
    return {"caps": {k: v for k in Caps.__slots__ if (v := getattr(caps, k)) is not None}}
