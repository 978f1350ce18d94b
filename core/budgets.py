"""Budgets, quotas and access rules: the calls that manage one tenant's envelope.

Each call is written once, as a builder that checks its arguments and returns the operation;
`BudgetCalls` turns each into a method and its async twin. Both `Guard` and the tenant handle
offer them: a tenant's own administrator may move money between its departments, and the
handle's runner refuses any operation outside its tenant.
"""

from __future__ import annotations

import warnings
from typing import Any, TypeVar

from . import arguments as arg
from .amounts import Amount, Unit, usd_to_microcents
from .calls import Flow, Runner, followed_twins, twins
from .errors import AllotmentError, CrossTenant, InvalidRequest
from .hierarchy import BudgetHierarchyWarning, larger_than_parent
from .models import ACTION_KIND_GLOB, Balance, BudgetStatus, FundOperation, OveragePolicy
from .periods import Period, parse_period
from .policy import AccessRule, QuotaKind, QuotaRule, glob_list
from .scopes import LEVELS, MAX_DIMENSIONS, parse_scope
from .stores import operations as ops
from .stores.operations import AUTO, PeriodChoice
from .validation import MAX_TOKENS, check_glob, check_int, check_key, check_list, shown

R = TypeVar("R")


def set_budget_op(scope: str, *, usd: Any = None, tokens: int | None = None,
                  credits: int | None = None, amount: int | None = None,
                  unit: Unit | str | None = None, period: Period | str | None = None,
                  per: str | None = None, overdraft_limit: Any = 0,
                  overage_policy: OveragePolicy | str = OveragePolicy.ALLOW_IF_AVAILABLE,
                  degrade: Any = (), alerts: Any = None,
                  required: bool = False, actor: str | None = None,
                  reason: str | None = None) -> ops.SetBudget:
    """Create or change the budget of `scope` in one unit (and period). A change adjusts
    the current bucket's allocation by the difference and keeps what was spent.

    `degrade=[al.Degrade(below=0.2, max_tokens=1024)]` caps calls instead of denying them
    when little remains (a rule's model is named per provider and must have a price in
    genai-prices: see `al.Degrade`); `alerts=[0.5, 0.8, 1.0]` are the fractions of the
    allocation that notify once spent (plus debt): holds never do.

    Returns the balances of the budget's current bucket. With `per=` it returns `()`: the
    budget is a template, and each value of the dimension gets its ledger on first use
    (read them with `balances(scope)` once a run has shown up).

    `required=True` (with `per=`) makes the dimension mandatory under `scope`: a call whose
    subject lacks it is denied DIMENSION_REQUIRED instead of skipping the template and
    being checked against the outer budgets alone.

    Every administrative call takes `actor=` (who, e.g. "ops@example.com") and `reason=`
    (why, e.g. a ticket), both optional, kept on the change's audit record.
    """
    path = parse_scope(scope)
    signed = arg.signed(actor, reason)
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
    if not isinstance(required, bool):
        raise InvalidRequest(f"required: expected True or False, got {shown(required)}")
    if required and per is None:
        raise InvalidRequest("required=True needs per=: it makes a template's dimension "
                             "mandatory (set_budget(scope, ..., per='run', required=True)); "
                             "to require a dimension without a budget of its own, use "
                             "set_access(scope, required_dimensions=['run'])")
    if kind == "usd":
        budget_unit, limit = Unit.USD_MICROCENTS, usd_to_microcents(value, "usd")
    elif kind == "amount":
        budget_unit = arg.unit(unit)
        limit = check_int(value, "amount")
    else:
        budget_unit = Unit.TOKENS if kind == "tokens" else Unit.CREDITS
        limit = check_int(value, kind)
    if kind != "amount" and unit is not None and arg.unit(unit) is not budget_unit:
        raise InvalidRequest(f"unit={unit!r} contradicts {kind}=")
    return ops.SetBudget(
        tenant=path.tenant, scope=path.base, per=None if per is None else arg.per(per),
        unit=budget_unit, period=parse_period(period), limit=limit,
        overdraft_limit=arg.limit_like(overdraft_limit, budget_unit, kind == "usd"),
        overage_policy=arg.policy(overage_policy) or OveragePolicy.ALLOW_IF_AVAILABLE,
        degrade=arg.degrade(degrade), alerts=arg.alerts(alerts), required=required,
        **signed)


def checked_hierarchy(op: ops.Op[R]) -> Flow[R]:
    """Run `op`, then warn (`BudgetHierarchyWarning`) about each budget it leaves larger
    than its parent's. The check reads the tenant's balances after the change; it never
    changes what was stored, and a failed read skips it rather than fail the call."""
    result: R = yield op
    if isinstance(op, ops.SetBudget):
        changed = [op]
    elif isinstance(op, ops.ApplyPlan):
        changed = [d for d in op.definitions if isinstance(d, ops.SetBudget)]
    else:
        return result
    try:
        rows: tuple[Balance, ...] = yield ops.Balances(
            tenant=op.tenant, scope=f"tenant:{op.tenant}", include_children=True)
    except AllotmentError:
        return result
    for message in larger_than_parent(rows, changed):
        # the caller's line: this flow, its driver, the generated method, the caller
        warnings.warn(message, BudgetHierarchyWarning, stacklevel=4)
    return result


def remove_budget_op(scope: str, unit: Unit | str, *, period: Period | str | None = None,
                     per: str | None = None, actor: str | None = None, reason: str | None = None
                     ) -> ops.RemoveBudget:
    """Drop a budget definition (its ledgers stay readable until pruned)."""
    path = arg.standard_scope(scope, "remove_budget")
    signed = arg.signed(actor, reason)
    return ops.RemoveBudget(tenant=path.tenant, scope=path.base, unit=arg.unit(unit),
                            period=parse_period(period),
                            per=None if per is None else arg.per(per), **signed)


def set_quota_op(scope: str, *, calls: int | None = None, runs: int | None = None,
                 concurrent: int | None = None, window: Period | str | None = None,
                 action_kind: str = "*", actor: str | None = None, reason: str | None = None
                 ) -> ops.SetQuota:
    """One quota under `scope`: `calls` or `runs` (distinct run ids first seen) per
    tumbling UTC `window`, or `concurrent` active reservations. `action_kind` (a glob,
    e.g. "tool.*") limits it to some actions. Setting the same quota again replaces it."""
    return _quota_op(scope, calls, runs, concurrent, window, action_kind, remove=False,
                     signed=arg.signed(actor, reason))


def remove_quota_op(scope: str, kind: str, *, window: Period | str | None = None,
                    action_kind: str = "*", actor: str | None = None, reason: str | None = None
                    ) -> ops.SetQuota:
    """Drop the quota of `kind` ("calls", "runs" or "concurrent") with that window."""
    return _quota_op(scope, *arg.quota_kind(kind), window, action_kind, remove=True,
                     signed=arg.signed(actor, reason))


def _quota_op(scope: str, calls: int | None, runs: int | None, concurrent: int | None,
              window: Any, action_kind: str, remove: bool,
              signed: dict[str, str | None]) -> ops.SetQuota:
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
    kinds = check_glob(action_kind, "action_kind", ACTION_KIND_GLOB)
    rule = QuotaRule(path.base, kind, check_int(limit, name), period, kinds)
    return ops.SetQuota(tenant=path.tenant, rule=rule, remove=remove, **signed)


def set_access_op(scope: str, *, models_allow: Any = None, models_deny: Any = None,
                  tools_allow: Any = None, tools_deny: Any = None,
                  max_tokens_per_call: int | None = None,
                  required_dimensions: Any = None, actor: str | None = None,
                  reason: str | None = None) -> ops.SetAccess:
    """The access rules of `scope` (replacing any before): globs on the model or tool
    name (`gpt-4o*` matches `openai:gpt-4o-mini`), a per-call output token cap, and the
    dimensions every call under the scope must carry (`required_dimensions=["run"]`: a
    subject without one is denied DIMENSION_REQUIRED)."""
    path = arg.standard_scope(scope, "set_access")
    signed = arg.signed(actor, reason)
    rule = AccessRule(
        path.base, glob_list(models_allow, "models_allow"),
        glob_list(models_deny, "models_deny"), glob_list(tools_allow, "tools_allow"),
        glob_list(tools_deny, "tools_deny"),
        None if max_tokens_per_call is None else check_int(
            max_tokens_per_call, "max_tokens_per_call", 1, MAX_TOKENS),
        checked_required(required_dimensions))
    return ops.SetAccess(tenant=path.tenant, scope=path.base, rule=rule, **signed)


def checked_required(value: Any) -> tuple[str, ...]:
    """Dimension keys a scope requires, each once, sorted (how both stores keep them)."""
    if value is None:
        return ()
    keys = check_list(value, "required_dimensions", MAX_DIMENSIONS, _required_key,
                      "['run', 'user']")
    return tuple(sorted(set(keys)))


def _required_key(value: Any, field: str) -> str:
    key = check_key(value, field)
    if key in LEVELS:
        raise InvalidRequest(f"{field}: {key!r} is a scope level, not a dimension; name a "
                             "dimension such as 'run' or 'user'")
    return key


def clear_access_op(scope: str, *, actor: str | None = None,
                    reason: str | None = None) -> ops.SetAccess:
    """Drop the access rules of `scope`."""
    path = arg.standard_scope(scope, "clear_access")
    return ops.SetAccess(tenant=path.tenant, scope=path.base, rule=None,
                         **arg.signed(actor, reason))


def freeze_op(scope: str, unit: Unit | str | None = None, *,
              actor: str | None = None, reason: str | None = None
              ) -> ops.SetStatus:
    """Refuse new reservations on the budgets of `scope`; returns how many were frozen."""
    return _status_op(scope, unit, BudgetStatus.FROZEN, arg.signed(actor, reason))


def unfreeze_op(scope: str, unit: Unit | str | None = None, *,
                actor: str | None = None, reason: str | None = None
                ) -> ops.SetStatus:
    """Let frozen budgets of `scope` take reservations again; returns how many changed."""
    return _status_op(scope, unit, BudgetStatus.ACTIVE, arg.signed(actor, reason))


def close_budget_op(scope: str, unit: Unit | str | None = None, *,
                    actor: str | None = None, reason: str | None = None
                    ) -> ops.SetStatus:
    """Close the budgets of `scope` for good: reservations and records are refused."""
    return _status_op(scope, unit, BudgetStatus.CLOSED, arg.signed(actor, reason))


def _status_op(scope: str, unit: Unit | str | None, status: BudgetStatus,
               signed: dict[str, str | None]) -> ops.SetStatus:
    path = arg.standard_scope(scope, "freeze, unfreeze and close_budget")
    return ops.SetStatus(tenant=path.tenant, scope=path.base,
                         unit=None if unit is None else arg.unit(unit), status=status,
                         **signed)


def set_budget_terms_op(scope: str, unit: Unit | str, *, overdraft_limit: Any = None,
                        overage_policy: OveragePolicy | str | None = None,
                        actor: str | None = None, reason: str | None = None
                        ) -> ops.SetBudgetTerms:
    """Change the overdraft limit and/or the overage policy (None: keep) of the budgets of
    `scope` in `unit` (each period and template there), in one step that keeps what their
    ledgers hold: a current ledger is then over its limit exactly while its debt exceeds
    the new limit. `overdraft_limit` is an integer in the unit or an `Amount` of it (e.g.
    `al.usd(5)`). Returns how many budgets changed; `NotFound` when the scope has none in
    that unit."""
    path = arg.standard_scope(scope, "set_budget_terms")
    signed = arg.signed(actor, reason)
    budget_unit = arg.unit(unit)
    if overdraft_limit is None and overage_policy is None:
        raise InvalidRequest("set_budget_terms: give overdraft_limit=, overage_policy= or both")
    return ops.SetBudgetTerms(
        tenant=path.tenant, scope=path.base, unit=budget_unit,
        overdraft_limit=None if overdraft_limit is None else arg.limit_like(
            overdraft_limit, budget_unit, in_dollars=False),
        overage_policy=arg.policy(overage_policy), **signed)


def fund_op(scope: str, operation: FundOperation | str, amount: Amount, *,
            period: Period | str | PeriodChoice | None = AUTO, spent: int | None = None,
            idempotency_key: str | None = None, actor: str | None = None, reason: str | None = None
            ) -> ops.Fund:
    """CREDIT, DEBIT, RESET, RESET_SPENT or REPAY_DEBT on a budget's current bucket."""
    path = parse_scope(scope)
    signed = arg.signed(actor, reason)
    fund = arg.enum(FundOperation, operation, "operation")
    units = arg.units(amount, "amount")
    if len(units) != 1:
        raise InvalidRequest("amount: fund one unit at a time")
    spent = None if spent is None else check_int(spent, "spent")
    bucket = period if period is AUTO else parse_period(period)
    unit, value = units[0]
    return ops.Fund(tenant=path.tenant, scope=path.path, unit=unit, period=bucket,
                    operation=fund, amount=value, spent=spent, actor=signed["actor"],
                    reason=signed["reason"],
                    **arg.keyed(idempotency_key, "fund", path.path, unit, bucket, fund, value,
                                spent))


def transfer_op(source: str, destination: str, amount: Amount, *,
                period: Period | str | PeriodChoice | None = AUTO,
                idempotency_key: str | None = None,
                actor: str | None = None, reason: str | None = None
                ) -> ops.Transfer:
    """Move allocation between two budgets of one tenant, atomically; refused (changing
    nothing) when the source's remaining cannot give that much. A periodic budget's current
    bucket only: the next period starts from the limits again (change them with
    `set_budget` to move money for good)."""
    src, dst = parse_scope(source), parse_scope(destination)
    signed = arg.signed(actor, reason)
    if src.tenant != dst.tenant:
        raise CrossTenant("transfer: both budgets must belong to one tenant "
                          f"(got {src.tenant!r} and {dst.tenant!r})")
    units = arg.units(amount, "amount")
    if len(units) != 1:
        raise InvalidRequest("amount: transfer one unit at a time")
    bucket = period if period is AUTO else parse_period(period)
    unit, value = units[0]
    return ops.Transfer(tenant=src.tenant, source=src.path, destination=dst.path, unit=unit,
                        period=bucket, amount=value, actor=signed["actor"],
                        reason=signed["reason"],
                        **arg.keyed(idempotency_key, "transfer", src.path, dst.path, unit,
                                    bucket, value))


class BudgetCalls(Runner):
    """Budgets, quotas and access rules of the tenants this runner may touch."""

    set_budget, aset_budget = followed_twins(set_budget_op, checked_hierarchy)
    remove_budget, aremove_budget = twins(remove_budget_op)
    set_quota, aset_quota = twins(set_quota_op)
    remove_quota, aremove_quota = twins(remove_quota_op)
    set_access, aset_access = twins(set_access_op)
    clear_access, aclear_access = twins(clear_access_op)
    freeze, afreeze = twins(freeze_op)
    unfreeze, aunfreeze = twins(unfreeze_op)
    close_budget, aclose_budget = twins(close_budget_op)
    set_budget_terms, aset_budget_terms = twins(set_budget_terms_op)
    fund, afund = twins(fund_op)
    transfer, atransfer = twins(transfer_op)
