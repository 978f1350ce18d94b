"""Operations of every kind, built the way the guard builds them."""

from __future__ import annotations

from typing import Any

import allotment as al
from allotment.budgets import (
    freeze_op,
    fund_op,
    remove_budget_op,
    set_access_op,
    set_budget_op,
    set_quota_op,
    transfer_op,
)
from allotment.platform import assign_plan_op, close_tenant_op
from allotment.reads import audit_op, balances_op, report_op
from allotment.reservation import commit_op, extend_op, release_op
from allotment.stores import operations as ops

from . import LLM

FREE = al.Plan(name="free", budgets=(al.BudgetSpec(tokens=10),))


def every_operation(guard: al.Guard, tenant: str) -> dict[str, ops.Op[Any]]:
    """One operation of every kind a store runs, built as the guard's calls build them (for
    tests of what each one sends: keys, slots, arguments)."""
    t = f"tenant:{tenant}"
    subject = al.Subject(tenant=tenant, workspace="w", agent="a",
                         dimensions={"run": "r1", "user": "u1"})
    rid = f"{tenant}:{'ab' * 16}"
    return {
        "set_budget": set_budget_op(t, tokens=100, period="day", overage_policy="REJECT"),
        "set_budget per run": set_budget_op(f"{t}/workspace:w", tokens=10, per="run",
                                            overage_policy="REJECT"),
        "remove_budget": remove_budget_op(t, "TOKENS", period="day"),
        "set_quota": set_quota_op(t, calls=10, window="minute"),
        "set_access": set_access_op(t, models_allow=["gpt-*"], max_tokens_per_call=100),
        "set_mode": ops.SetMode(tenant=tenant, mode="shadow"),
        "assign_plan": assign_plan_op(tenant, FREE),
        "freeze": freeze_op(t),
        "fund": fund_op(f"{t}/workspace:w/run:r1", "CREDIT", al.tokens(5),
                        idempotency_key="k-fund"),
        "transfer": transfer_op(t, f"{t}/workspace:w", al.tokens(5),
                                idempotency_key="k-transfer"),
        "reserve": guard._reserve_op(subject, LLM, al.tokens(5), idempotency_key="k-reserve"),
        "decide": guard._reserve_op(subject, LLM, al.tokens(5), dry_run=True),
        "commit": commit_op(rid, al.tokens(5), idempotency_key="k-commit"),
        "release": release_op(rid, "done", idempotency_key="k-release"),
        "extend": extend_op(rid, 1_000, idempotency_key="k-extend"),
        "record": guard._record_op(subject, LLM, al.tokens(5), idempotency_key="k-record"),
        "get": ops.Get(tenant=tenant, reservation_id=rid),
        "balances": balances_op(t),
        "audit": audit_op(tenant),
        "report": report_op(tenant),
        "close_tenant": close_tenant_op(tenant, reason="closed"),
    }
