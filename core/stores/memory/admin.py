"""Administration beyond writing definitions, as admin.lua: a tenant's mode, budget statuses,
funding and transfers, which move allocations and are idempotent by key, and closing a
tenant."""

from __future__ import annotations

from dataclasses import replace

from ... import ledger
from ...amounts import Amount, Unit
from ...errors import BudgetExceeded, InvalidRequest, NotFound
from ...events import AuditType, Notification, NotificationType
from ...models import (
    BudgetStatus,
    FundResult,
    Reason,
    ReservationStatus,
    TenantClosure,
    TenantInfo,
    TransferResult,
)
from ...periods import Period, bucket
from ...scopes import parse_scope
from ...validation import MAX_AMOUNT
from ..operations import (
    AUTO,
    CloseTenant,
    Fund,
    PeriodChoice,
    SetBudgetTerms,
    SetMode,
    SetStatus,
    SuspendTenant,
    Transfer,
)
from .state import (
    Definition,
    LedgerKey,
    Tenant,
    balance,
    dimension_ledgers,
    ledger_at,
    log,
    over_limit_exited,
    recompute_over,
    record_of,
    release_held,
    relinked,
    remember,
    replay,
)
from .sweep import reap


def set_mode(t: Tenant, op: SetMode, now: int) -> None:
    """Pin the tenant to enforce or shadow mode, or leave it to the guard (None)."""
    t.mode = op.mode
    log(t, now, AuditType.MODE_SET, detail={"mode": op.mode}, actor=op.actor,
        reason=op.reason)
    t.cx.notes.append(Notification(NotificationType.MODE_CHANGED, t.name, now,
                                   reason=op.mode or ""))


def set_status(t: Tenant, op: SetStatus, now: int) -> int:
    """Freeze, close or reactivate a scope's budgets (those in one unit, if given)."""
    matched = [d for d in t.definitions.get(op.scope, {}).values()
               if op.unit is None or d.unit is op.unit]
    if not matched:
        raise NotFound(f"no budget at {op.scope}" + (f" in {op.unit.value}" if op.unit else ""))
    for d in matched:
        d.status = op.status
    relinked(t)
    log(t, now, AuditType.BUDGET_STATUS, scopes=(op.scope,),
        detail={"status": op.status.value, "budgets": len(matched)}, actor=op.actor,
        reason=op.reason)
    return len(matched)


def suspend_tenant(t: Tenant, op: SuspendTenant, now: int) -> int:
    """Freeze or unfreeze every open budget of the tenant at once (as admin.lua's
    `suspend_tenant`); closed ones stay closed."""
    want = BudgetStatus.FROZEN if op.suspended else BudgetStatus.ACTIVE
    open_ = [d for by_key in t.definitions.values() for d in by_key.values()
             if d.status is not BudgetStatus.CLOSED]
    if not open_:
        raise NotFound(f"tenant {t.name} has no open budgets to "
                       f"{'freeze' if op.suspended else 'unfreeze'} (suspending freezes its "
                       "budgets: give it a plan or a budget first)")
    changed = [d for d in open_ if d.status is not want]
    for d in changed:
        d.status = want
    if changed:
        relinked(t)
        audit, note = ((AuditType.TENANT_SUSPENDED, NotificationType.TENANT_SUSPENDED)
                       if op.suspended else
                       (AuditType.TENANT_REACTIVATED, NotificationType.TENANT_REACTIVATED))
        log(t, now, audit, scopes=(f"tenant:{t.name}",), detail={"budgets": len(changed)},
            actor=op.actor, reason=op.reason)
        t.cx.notes.append(Notification(note, t.name, now, reason=op.reason or ""))
    return len(changed)


def set_budget_terms(t: Tenant, op: SetBudgetTerms, now: int) -> int:
    """Change the overdraft limit and/or overage policy of a scope's budgets in one unit;
    their current ledgers keep their figures, their over-limit flags follow the limit."""
    matched = [d for d in t.definitions.get(op.scope, {}).values() if d.unit is op.unit]
    if not matched:
        raise NotFound(f"no budget at {op.scope} in {op.unit.value}")
    for d in matched:
        if op.overdraft_limit is not None:
            d.overdraft_limit = op.overdraft_limit
        if op.overage_policy is not None:
            d.overage_policy = op.overage_policy
        current = bucket(d.period, now)
        keys = (list(dimension_ledgers(t, d, current)) if d.per is not None
                else [(op.scope, d.unit, d.period, current)])
        for key in keys:
            if key in t.ledgers:  # one never touched has no debt: nothing to flag
                recompute_over(t, key, ledger_at(t, key, d, now), d.overdraft_limit, now)
    relinked(t)
    log(t, now, AuditType.BUDGET_UPDATED, scopes=(op.scope,), detail={
        "unit": op.unit.value, "overdraft_limit": op.overdraft_limit,
        "overage_policy": None if op.overage_policy is None else op.overage_policy.value,
        "budgets": len(matched)}, actor=op.actor, reason=op.reason)
    return len(matched)


def fund(t: Tenant, op: Fund, now: int) -> FundResult:
    """Credit, debit, reset or repay the debt of one budget's current ledger."""
    replayed = replay(t, "fund", op.idempotency_key, op.fingerprint, now)
    if replayed is not None:
        return replayed  # type: ignore[no-any-return]
    key, d = _locate(t, op.scope, op.unit, op.period, now)
    state = ledger_at(t, key, d, now)
    after = ledger.fund(state, op.operation, op.amount, op.spent, d.overdraft_limit)
    if after is None:
        raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, key[0], op.unit, None,
                                           state, op.amount, now))
    t.ledgers[key] = after
    relinked(t)
    if state.over_limit and not after.over_limit:  # ledger.fund re-derived the flag
        over_limit_exited(t, key, after, now)
    result = FundResult(balance(key, state, d), balance(key, after, d))
    remember(t, "fund", op.idempotency_key, op.fingerprint, result, now)
    log(t, now, AuditType.BUDGET_FUNDED, scopes=(key[0],), idempotency_key=op.idempotency_key,
        actual=(Amount(op.unit, op.amount),), detail={"operation": op.operation.value},
        actor=op.actor, reason=op.reason)
    return result


def transfer(t: Tenant, op: Transfer, now: int) -> TransferResult:
    """Move allocation from one budget's current ledger to another's in the same unit."""
    replayed = replay(t, "transfer", op.idempotency_key, op.fingerprint, now)
    if replayed is not None:
        return replayed  # type: ignore[no-any-return]
    skey, sdef = _locate(t, op.source, op.unit, op.period, now)
    dkey, ddef = _locate(t, op.destination, op.unit, op.period, now)
    if skey == dkey:
        raise InvalidRequest("transfer: source and destination are the same budget")
    source, destination = ledger_at(t, skey, sdef, now), ledger_at(t, dkey, ddef, now)
    if source.remaining < op.amount:
        raise BudgetExceeded(ledger.denial(Reason.BUDGET_EXCEEDED, skey[0], op.unit, None,
                                           source, op.amount, now))
    if destination.allocated + op.amount > MAX_AMOUNT:
        raise InvalidRequest(f"amount: {dkey[0]} would hold more than a ledger can "
                             f"({MAX_AMOUNT})")
    source.allocated -= op.amount
    destination.allocated += op.amount
    recompute_over(t, dkey, destination, ddef.overdraft_limit, now)
    t.ledgers[skey], t.ledgers[dkey] = source, destination
    result = TransferResult(balance(skey, source, sdef), balance(dkey, destination, ddef))
    remember(t, "transfer", op.idempotency_key, op.fingerprint, result, now)
    log(t, now, AuditType.BUDGET_TRANSFERRED, scopes=(skey[0], dkey[0]),
        idempotency_key=op.idempotency_key, actual=(Amount(op.unit, op.amount),),
        actor=op.actor, reason=op.reason)
    return result


def _locate(t: Tenant, scope: str, unit: Unit, period: Period | PeriodChoice | None,
            now: int) -> tuple[LedgerKey, Definition]:
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


def close_tenant(t: Tenant, op: CloseTenant, now: int) -> TenantClosure:
    """Close the tenant for good: overdue reservations expire (as a sweep would), the other
    open ones are released, every budget closed, every key revoked. Its webhooks are the
    store's to disable (`Outbox.close`). Closed already: nothing changes."""
    if t.closed_at_ms is not None:
        return TenantClosure(record_of(t), 0, 0, 0, 0, False)
    reap(t, now, len(t.reservations))
    released = 0
    for res in list(t.reservations.values()):
        if res.status is ReservationStatus.ACTIVE:
            release_held(t, res, now, None, "tenant closed")
            released += 1
    closed = 0
    for defs in t.definitions.values():
        for d in defs.values():
            if d.status is not BudgetStatus.CLOSED:
                d.status = BudgetStatus.CLOSED
                closed += 1
    relinked(t)
    revoked = 0
    for key_id, (key, secret_hash) in list(t.api_keys.items()):
        if not key.revoked:
            t.api_keys[key_id] = (replace(key, revoked=True), secret_hash)
            revoked += 1
    if t.profile is None:
        t.profile = TenantInfo(t.name, t.name, now)
    t.closed_at_ms = now
    log(t, now, AuditType.TENANT_CLOSED, scopes=(f"tenant:{t.name}",), detail={
        "released": released, "budgets_closed": closed, "keys_revoked": revoked},
        actor=op.actor, reason=op.reason)
    t.cx.notes.append(Notification(NotificationType.TENANT_CLOSED, t.name, now,
                                   reason=op.reason or ""))
    return TenantClosure(record_of(t), released, closed, revoked, 0, True)
