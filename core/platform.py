"""The platform operator's calls: a tenant's mode and plan, and the sweep across tenants.
They are for the unrestricted guard only; a tenant handle never offers them (a tenant must
not switch itself to shadow mode or onto another tier)."""

from __future__ import annotations

from . import arguments as arg
from .budgets import set_access_op, set_budget_op, set_quota_op
from .calls import Runner, twins
from .errors import InvalidRequest
from .plans import Plan, relative_scope
from .stores import operations as ops
from .validation import check_int, check_name


def set_mode_op(tenant: str, mode: str | None) -> ops.SetMode:
    """"shadow" (never deny, record what would have been denied), "enforce", or None to
    follow the guard's own mode."""
    return ops.SetMode(tenant=check_name(tenant, "tenant"),
                       mode=arg.mode(mode, allow_none=True))


def assign_plan_op(tenant: str, plan: Plan) -> ops.ApplyPlan:
    """Install `plan` for `tenant` in one step. Re-assigning (an upgrade) changes limits
    in place and keeps the period's spend; what the old plan had and the new one lacks
    is removed."""
    if not isinstance(plan, Plan):
        raise InvalidRequest(f"plan: expected an al.Plan, got {plan!r}")
    tenant = check_name(tenant, "tenant")
    definitions: list[ops.SetBudget | ops.SetQuota | ops.SetAccess] = []
    for b in plan.budgets:
        definitions.append(set_budget_op(
            relative_scope(tenant, b.scope), usd=b.usd, tokens=b.tokens, credits=b.credits,
            amount=b.amount, unit=b.unit, period=b.period, per=b.per,
            overdraft_limit=b.overdraft_limit, overage_policy=b.overage_policy,
            degrade=b.degrade, alerts=b.alerts))
    for q in plan.quotas:
        definitions.append(set_quota_op(
            relative_scope(tenant, q.scope), calls=q.calls, runs=q.runs,
            concurrent=q.concurrent, window=q.window, action_kind=q.action_kind))
    for a in plan.access:
        definitions.append(set_access_op(
            relative_scope(tenant, a.scope), models_allow=a.models_allow,
            models_deny=a.models_deny, tools_allow=a.tools_allow, tools_deny=a.tools_deny,
            max_tokens_per_call=a.max_tokens_per_call))
    return ops.ApplyPlan(tenant=tenant, name=plan.name, definitions=tuple(definitions),
                         mode=plan.mode)


def sweep_op(limit: int = 1_000) -> ops.Sweep:
    """Expire up to `limit` overdue reservations now, across tenants; returns how many
    expired."""
    return ops.Sweep(tenant="", limit=check_int(limit, "limit", 1))


class PlatformCalls(Runner):
    """What only the platform operator may do: modes, plans, sweeping every tenant."""

    set_mode, aset_mode = twins(set_mode_op)
    assign_plan, aassign_plan = twins(assign_plan_op)
    sweep, asweep = twins(sweep_op)
