"""Record, as record.lua: charge a cost known only afterwards, without a reservation."""

from __future__ import annotations

from ... import ledger
from ...errors import BudgetExceeded, Denied
from ...events import AuditType
from ...models import BudgetStatus, Decision, Outcome, Reason, RecordResult
from ..operations import Record, checked_amounts, in_unit_order
from .state import (
    COMMITTED,
    Tenant,
    alerts,
    amounts,
    count,
    count_usage,
    debts_added,
    debts_of,
    ledger_at,
    log,
    missing_dimensions,
    refuse_closed,
    remember,
    replay,
    settlement,
    snapshot,
    targets,
)


def record(t: Tenant, op: Record, now: int) -> RecordResult:
    """Charge `op.actual` to every ledger the subject charges; records pass debt and
    over-limit budgets (the spend happened), never a frozen or closed one."""
    replayed = replay(t, "record", op.idempotency_key, op.fingerprint, now)
    if replayed is not None:
        return replayed  # type: ignore[no-any-return]
    if t.closed_at_ms is not None:
        refuse_closed(t)
    actual = dict(op.actual)
    checked_amounts(actual, "actual")
    shadow = (t.mode or ("shadow" if op.shadow else "enforce")) == "shadow"
    lacking = missing_dimensions(t, op.scopes, op.dimensions)
    if lacking is not None and not shadow:  # as a frozen budget: the record is refused
        raise Denied(lacking)
    route = targets(t, op.scopes, op.dimensions, actual)
    if route is None:
        raise Denied(Decision(Outcome.DENY, reason=Reason.BUDGET_NOT_FOUND, scope=op.scopes[-1]))
    charged_ledgers, scopes = route.current(now), route.scopes
    for key, d in charged_ledgers:
        if d.status is not BudgetStatus.ACTIVE and not shadow:
            reason = (Reason.BUDGET_FROZEN if d.status is BudgetStatus.FROZEN
                      else Reason.BUDGET_CLOSED)
            raise BudgetExceeded(ledger.denial(reason, key[0], d.unit, d.period,
                                               ledger_at(t, key, d, now), actual[d.unit], now))
    changed = [(key, d, ledger_at(t, key, d, now)) for key, d in charged_ledgers]
    debts = debts_of(changed)
    charged = ledger.apply(settlement(changed, dict.fromkeys(actual, 0), actual,
                                      op.overage_policy, now, release_reserved=False,
                                      shadow=shadow), now)
    for key, _, state in changed:
        t.ledgers[key] = state
    result = RecordResult(t.cx.ids.new(op.tenant), amounts(in_unit_order(charged)),
                          snapshot(changed))
    remember(t, "record", op.idempotency_key, op.fingerprint, result, now)
    log(t, now, AuditType.RECORDED, scopes=scopes, subject=op.subject, action=op.action,
        idempotency_key=op.idempotency_key, actual=amounts(op.actual), charged=result.charged)
    count(t, now, route.counters("records", COMMITTED), charged)
    count_usage(t, now, now, op.subject.scope_path, op.action.name, 1, 0, op.usage,
                charged.items())
    alerts(t, changed, now, None)
    debts_added(t, changed, debts, now, None)
    if t.cx.forecast is not None:
        t.cx.forecast(t, changed, now)
    return result
