"""Writers of definitions (budgets, quotas, access rules, plans), as definitions.lua: shared by
the administration calls and by reserve, which installs a guard's default plan for a tenant
seen the first time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...events import AuditType, Notification, NotificationType
from ...models import Balance
from ...periods import bucket
from ..operations import ApplyPlan, RemoveBudget, SetAccess, SetBudget, SetQuota
from .state import (
    Definition,
    Tenant,
    balance,
    dimension_ledgers,
    ledger_at,
    log,
    period_name,
    recompute_over,
    redefined,
    relinked,
    requirements_changed,
)


def set_budget(t: Tenant, op: SetBudget, now: int) -> tuple[Balance, ...]:
    """Add or change a budget; its current ledgers follow the new limit at once."""
    defs = t.definitions.setdefault(op.scope, {})
    d = defs.get((op.scope, op.unit, op.period, op.per))
    if d is None:
        d = Definition(op.scope, op.unit, op.period, op.per, op.limit, op.overdraft_limit,
                       op.overage_policy, op.degrade, op.alerts)
        defs[d.key] = d
        t.definitions[op.scope] = dict(sorted(defs.items(), key=lambda kv: kv[1].order()))
        redefined(t)
    else:
        d.limit, d.overdraft_limit, d.overage_policy = (op.limit, op.overdraft_limit,
                                                        op.overage_policy)
        d.degrade, d.alerts = op.degrade, op.alerts
        relinked(t)
    if d.required != op.required:
        d.required = op.required
        requirements_changed(t, op.scope)
    log(t, now, AuditType.BUDGET_SET, scopes=(op.scope,), detail={
        "unit": op.unit.value, "limit": op.limit, "period": period_name(op.period),
        "per": op.per}, actor=op.actor, reason=op.reason)
    current = bucket(op.period, now)
    if op.per is not None:  # every dimension ledger of this bucket follows, now
        for key in list(dimension_ledgers(t, d, current)):
            recompute_over(t, key, ledger_at(t, key, d, now), d.overdraft_limit, now)
        return ()
    key = (op.scope, op.unit, op.period, current)
    state = t.ledgers[key] = ledger_at(t, key, d, now)
    recompute_over(t, key, state, d.overdraft_limit, now)
    return (balance(key, state, d),)


def remove_budget(t: Tenant, op: RemoveBudget, now: int) -> int:
    """Drop a budget's definition (its ledgers stay until pruned); 1 if there was one."""
    removed = t.definitions.get(op.scope, {}).pop((op.scope, op.unit, op.period, op.per), None)
    if removed is not None:
        redefined(t)
        requirements_changed(t, op.scope)
        log(t, now, AuditType.BUDGET_SET, scopes=(op.scope,),
            detail={"unit": op.unit.value, "removed": True}, actor=op.actor,
            reason=op.reason)
    return int(removed is not None)


def set_quota(t: Tenant, op: SetQuota, now: int) -> None:
    """Add, change or remove one quota rule of a scope."""
    rules = t.quotas.setdefault(op.rule.scope, {})
    if op.remove:
        rules.pop(op.rule.key, None)
        if not rules:  # as the Redis store drops the scope's field: no quotas, the lean path
            del t.quotas[op.rule.scope]
    else:
        rules[op.rule.key] = op.rule
    log(t, now, AuditType.QUOTA_SET, scopes=(op.rule.scope,), detail={
        "kind": op.rule.kind.value, "limit": None if op.remove else op.rule.limit,
        "window": period_name(op.rule.window), "action_kind": op.rule.action_kind},
        actor=op.actor, reason=op.reason)


def set_access(t: Tenant, op: SetAccess, now: int) -> None:
    """Set or remove a scope's access rules."""
    if op.rule is None:
        t.access.pop(op.scope, None)
    else:
        t.access[op.scope] = op.rule
    requirements_changed(t, op.scope)
    log(t, now, AuditType.ACCESS_SET, scopes=(op.scope,), detail={"removed": op.rule is None},
        actor=op.actor, reason=op.reason)


def apply_plan(t: Tenant, op: ApplyPlan, now: int) -> None:
    """Install a plan's definitions, and drop those of the previous plan this one lacks."""
    keys: set[tuple[str, Any]] = set()
    for definition in op.definitions:
        if op.actor is not None or op.reason is not None:  # its records are signed alike
            definition = replace(definition, actor=op.actor, reason=op.reason)
        if isinstance(definition, SetBudget):
            set_budget(t, definition, now)
            keys.add(("budget", (definition.scope, definition.unit, definition.period,
                                 definition.per)))
        elif isinstance(definition, SetQuota):
            set_quota(t, definition, now)
            keys.add(("quota", definition.rule.key))
        else:
            set_access(t, definition, now)
            keys.add(("access", definition.scope))
    for kind, key in t.plan_keys - keys:  # what the previous plan had and this one lacks
        if kind == "budget":
            t.definitions.get(key[0], {}).pop(key, None)
            redefined(t)
            requirements_changed(t, key[0])
        elif kind == "quota":
            t.quotas.get(key[0], {}).pop(key, None)
        else:
            t.access.pop(key, None)
            requirements_changed(t, key)
    t.plan, t.plan_keys = op.name, keys
    if op.mode is not None and op.mode != t.mode:
        t.mode = op.mode  # a plan that changes the mode says so, as set_mode does
        t.cx.notes.append(Notification(NotificationType.MODE_CHANGED, t.name, now,
                                       reason=op.mode))
    log(t, now, AuditType.PLAN_ASSIGNED, detail={"plan": op.name}, actor=op.actor,
        reason=op.reason)
