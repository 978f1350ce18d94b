"""`suspend_tenant` / `resume_tenant`: every open budget of a tenant frozen (or unfrozen) in
one store step, with one `tenant.suspended` (`tenant.reactivated`) record and notification;
budgets closed one by one stay closed (both stores, sync and async)."""

from __future__ import annotations

import pytest

import allotment as al
from allotment.errors import TenantClosed

LLM = al.Action("llm.completion", "openai:gpt-4o")
WHO = al.Subject(tenant="acme", workspace="w")


def statuses(guard: al.Guard) -> list[tuple[str, str]]:
    return [(row.scope, row.status.value) for row in guard.balances("tenant:acme")]


def test_suspending_freezes_every_open_budget_at_once(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme/workspace:w", usd=5)
    guard.set_budget("tenant:acme/workspace:old", usd=1)
    guard.close_budget("tenant:acme/workspace:old")
    guard.set_budget("tenant:beta", usd=1)
    held = guard.reserve(WHO, LLM, al.usd(1))
    seen: list[al.Notification] = []
    guard.on(al.NotificationType.TENANT_SUSPENDED, seen.append)
    guard.on(al.NotificationType.TENANT_REACTIVATED, seen.append)

    assert guard.suspend_tenant("acme", actor="ops", reason="invoice unpaid") == 2
    assert statuses(guard) == [("tenant:acme", "FROZEN"), ("tenant:acme/workspace:old", "CLOSED"),
                               ("tenant:acme/workspace:w", "FROZEN")]
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(WHO, LLM, al.usd(1))
    assert denied.value.decision.reason == "BUDGET_FROZEN"
    held.commit(al.usd("0.5"))  # what was held settles
    guard.reserve(al.Subject(tenant="beta"), LLM, al.usd("0.1")).release()  # beta untouched
    assert guard.suspend_tenant("acme") == 0  # suspended already: nothing recorded

    assert guard.resume_tenant("acme", reason="paid") == 2
    assert statuses(guard) == [("tenant:acme", "ACTIVE"), ("tenant:acme/workspace:old", "CLOSED"),
                               ("tenant:acme/workspace:w", "ACTIVE")]
    guard.reserve(WHO, LLM, al.usd(1)).release()
    assert guard.resume_tenant("acme") == 0
    records = [(r.type, r.actor, r.reason, r.detail, r.scopes) for r in guard.audit("acme")
               if r.type in (al.AuditType.TENANT_SUSPENDED, al.AuditType.TENANT_REACTIVATED)]
    assert records == [
        (al.AuditType.TENANT_SUSPENDED, "ops", "invoice unpaid", {"budgets": 2},
         ("tenant:acme",)),
        (al.AuditType.TENANT_REACTIVATED, None, "paid", {"budgets": 2}, ("tenant:acme",))]
    assert [(n.type, n.tenant, n.reason) for n in seen] == [
        (al.NotificationType.TENANT_SUSPENDED, "acme", "invoice unpaid"),
        (al.NotificationType.TENANT_REACTIVATED, "acme", "paid")]


def test_a_tenant_without_an_open_budget_cannot_be_suspended(guard: al.Guard) -> None:
    with pytest.raises(al.NotFound, match="no open budgets to freeze"):
        guard.suspend_tenant("nobody")
    guard.set_budget("tenant:acme", usd=1)
    guard.close_budget("tenant:acme")
    before = guard.audit("acme")
    with pytest.raises(al.NotFound, match="no open budgets to unfreeze"):
        guard.resume_tenant("acme")
    assert guard.audit("acme") == before
    with pytest.raises(al.InvalidRequest, match="tenant"):
        guard.suspend_tenant("Not A Tenant")
    with pytest.raises(al.InvalidRequest, match="reason"):
        guard.suspend_tenant("acme", reason="")


def test_a_closed_tenant_is_neither_suspended_nor_resumed(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=1)
    guard.close_tenant("acme")
    for call in (guard.suspend_tenant, guard.resume_tenant):
        with pytest.raises(TenantClosed):
            call("acme")


def test_templates_and_budgets_frozen_by_hand_count_alike(guard: al.Guard) -> None:
    """A per-run template is frozen with the rest (its runs are refused); a budget frozen by
    hand before is not counted by the suspension, and the resumption makes it active too."""
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme", usd=1, per="run")
    guard.set_budget("tenant:acme/workspace:w", usd=5)
    guard.freeze("tenant:acme/workspace:w")
    assert guard.suspend_tenant("acme") == 2  # the root budget and the template
    run = al.Subject(tenant="acme", dimensions={"run": "r-1"})
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(run, LLM, al.usd("0.1"))
    assert denied.value.decision.reason == "BUDGET_FROZEN"
    assert guard.resume_tenant("acme") == 3
    guard.reserve(run, LLM, al.usd("0.1")).release()
    assert {row.status for row in guard.balances("tenant:acme")} == {al.BudgetStatus.ACTIVE}


def test_the_status_follows_the_definitions_templates_included(guard: al.Guard) -> None:
    """`tenant_status` reads the budgets' definitions in one step: a tenant whose only
    budget is a per-run template (no run has made a ledger of it) reads SUSPENDED once
    suspended; closed budgets do not count; freezing every open budget by hand suspends it
    too; a closed tenant is CLOSED; one without budgets is ACTIVE (the fixture runs it
    through the async twins too)."""
    assert guard.tenant_status("acme") is al.TenantStatus.ACTIVE  # nothing held yet
    guard.set_budget("tenant:acme/workspace:w", usd=1, per="run")
    assert guard.balances("tenant:acme") == ()  # no ledger for the status to read
    guard.suspend_tenant("acme")
    assert guard.tenant_status("acme") is al.TenantStatus.SUSPENDED
    guard.resume_tenant("acme")
    assert guard.tenant_status("acme") is al.TenantStatus.ACTIVE

    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget("tenant:acme/workspace:old", usd=1)
    guard.close_budget("tenant:acme/workspace:old")
    guard.freeze("tenant:acme")
    assert guard.tenant_status("acme") is al.TenantStatus.ACTIVE  # the template is open
    guard.freeze("tenant:acme/workspace:w")
    assert guard.tenant_status("acme") is al.TenantStatus.SUSPENDED  # by hand, alike
    guard.set_budget("tenant:acme/workspace:new", usd=1)  # a new budget starts active
    assert guard.tenant_status("acme") is al.TenantStatus.ACTIVE
    guard.close_tenant("acme")
    assert guard.tenant_status("acme") is al.TenantStatus.CLOSED
    assert guard.tenant_status("beta") is al.TenantStatus.ACTIVE
    with pytest.raises(al.InvalidRequest, match="tenant"):
        guard.tenant_status("Not A Tenant")

