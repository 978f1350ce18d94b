"""`set_budget_terms`: a budget's overdraft limit and overage policy change in one store step,
its ledgers keep what they hold, and each current ledger's over-limit flag follows the new
limit (both stores, sync and async)."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al

ACME = "tenant:acme"
TOKENS = "TOKENS"
LLM = al.Action("llm.completion", "openai:gpt-4o")
WHO = al.Subject(tenant="acme")


def in_debt(guard: al.Guard) -> al.Balance:
    """1,000 tokens that may owe 100: a commit of 1,050 leaves 50 of debt, within the limit."""
    guard.set_budget(ACME, tokens=1_000, overdraft_limit=100,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    guard.reserve(WHO, LLM, al.tokens(900)).commit(al.tokens(1_050))
    (row,) = guard.balances(ACME)
    assert (row.spent, row.debt, row.is_over_limit) == (1_000, 50, False)
    return row


def test_lowering_the_limit_below_the_debt_blocks_and_raising_it_lets_through(
        guard: al.Guard) -> None:
    before = in_debt(guard)
    assert guard.set_budget_terms(ACME, TOKENS, overdraft_limit=10) == 1
    (row,) = guard.balances(ACME)
    assert (row.overdraft_limit, row.is_over_limit) == (10, True)
    assert (row.allocated, row.reserved, row.spent, row.debt) == (
        before.allocated, before.reserved, before.spent, before.debt)
    guard.fund(ACME, "CREDIT", al.tokens(500))  # money alone does not clear a debt's flag
    denied = guard.decide(WHO, LLM, al.tokens(100))
    assert denied.reason == "OVERDRAFT_LIMIT_EXCEEDED"
    assert guard.set_budget_terms(ACME, TOKENS, overdraft_limit=al.tokens(60)) == 1
    (row,) = guard.balances(ACME)
    assert (row.overdraft_limit, row.is_over_limit, row.debt) == (60, False, 50)
    guard.reserve(WHO, LLM, al.tokens(100)).commit(al.tokens(100))
    guard.set_budget_terms(ACME, TOKENS, overdraft_limit=0)  # any debt then blocks
    assert guard.decide(WHO, LLM, al.tokens(1)).reason == "OVERDRAFT_LIMIT_EXCEEDED"


def test_the_policy_changes_what_a_commit_above_its_estimate_may_do(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, overdraft_limit=50, overage_policy="ALLOW_WITH_OVERDRAFT")
    guard.set_budget_terms(ACME, TOKENS, overage_policy="REJECT")
    held = guard.reserve(WHO, LLM, al.tokens(10))
    with pytest.raises(al.BudgetExceeded):
        held.commit(al.tokens(120))
    guard.set_budget_terms(ACME, "tokens", overage_policy=al.OveragePolicy.ALLOW_WITH_OVERDRAFT)
    held.commit(al.tokens(120))
    (row,) = guard.balances(ACME)
    assert (row.spent, row.debt, row.overdraft_limit) == (100, 20, 50)  # the limit was kept


def test_every_budget_of_the_scope_in_that_unit_changes_and_no_other(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=1_000)
    guard.set_budget(ACME, tokens=100, period="day")
    guard.set_budget(ACME, tokens=10, per="run")
    guard.set_budget(ACME, usd=1, overdraft_limit=1)
    guard.set_budget(f"{ACME}/workspace:w", tokens=5)
    guard.reserve(al.Subject(tenant="acme", dimensions={"run": "r1"}), LLM,
                  al.tokens(5)).commit(al.tokens(5))
    usd_before = [r for r in guard.balances(ACME) if r.unit is al.Unit.USD_MICROCENTS]
    child_before = guard.balances(f"{ACME}/workspace:w")
    assert guard.set_budget_terms(ACME, TOKENS, overdraft_limit=7) == 3
    rows = guard.balances(ACME)
    tokens = [r for r in rows if r.unit is al.Unit.TOKENS and r.scope.startswith(ACME)
              and "workspace" not in r.scope]
    assert {r.scope for r in tokens} == {ACME, f"{ACME}/run:r1"}
    assert {r.overdraft_limit for r in tokens} == {7}
    assert [r for r in rows if r.unit is al.Unit.USD_MICROCENTS] == usd_before
    assert guard.balances(f"{ACME}/workspace:w") == child_before


def test_a_frozen_budget_takes_new_terms_and_stays_frozen(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)
    guard.freeze(ACME)
    assert guard.set_budget_terms(ACME, TOKENS, overdraft_limit=5) == 1
    (row,) = guard.balances(ACME)
    assert (row.status, row.overdraft_limit) == (al.BudgetStatus.FROZEN, 5)


def test_the_change_is_on_the_audit_record(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, period="day")
    guard.set_budget_terms(ACME, TOKENS, overdraft_limit=2**53 - 1,
                           overage_policy="allow_with_overdraft", actor="ops@example.com",
                           reason="OPS-7")
    record = guard.audit("acme", types=["budget.updated"])[-1]
    assert (record.scopes, record.actor, record.reason) == ((ACME,), "ops@example.com", "OPS-7")
    assert record.detail == {"unit": TOKENS, "overdraft_limit": 2**53 - 1,
                             "overage_policy": "ALLOW_WITH_OVERDRAFT", "budgets": 1}
    guard.set_budget_terms(ACME, TOKENS, overage_policy="REJECT")
    assert guard.audit("acme", types=["budget.updated"])[-1].detail == {
        "unit": TOKENS, "overdraft_limit": None, "overage_policy": "REJECT", "budgets": 1}


@pytest.mark.parametrize("scope, unit, terms", [
    (ACME, TOKENS, {}),
    (ACME, TOKENS, {"overdraft_limit": -1}),
    (ACME, TOKENS, {"overdraft_limit": 2**53}),
    (ACME, TOKENS, {"overdraft_limit": 1.5}),
    (ACME, TOKENS, {"overdraft_limit": "5"}),
    (ACME, TOKENS, {"overdraft_limit": True}),
    (ACME, TOKENS, {"overdraft_limit": al.usd(1)}),
    (ACME, TOKENS, {"overage_policy": "SOMETIMES"}),
    (ACME, "EUROS", {"overdraft_limit": 1}),
    (f"{ACME}/run:r1", TOKENS, {"overdraft_limit": 1}),
])
def test_bad_terms_are_refused_and_change_nothing(guard: al.Guard, scope: str, unit: str,
                                                  terms: dict[str, Any]) -> None:
    guard.set_budget(ACME, tokens=100)
    before = guard.balances(ACME), guard.audit("acme")
    with pytest.raises(al.InvalidRequest):
        guard.set_budget_terms(scope, unit, **terms)
    assert (guard.balances(ACME), guard.audit("acme")) == before


def test_no_budget_in_that_unit_is_not_found(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    before = guard.balances(ACME), guard.audit("acme")
    for scope, unit in ((ACME, TOKENS), (f"{ACME}/workspace:none", "USD_MICROCENTS")):
        with pytest.raises(al.NotFound):
            guard.set_budget_terms(scope, unit, overdraft_limit=1)
    assert (guard.balances(ACME), guard.audit("acme")) == before


def test_a_tenant_handle_changes_its_own_budgets_only(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)
    guard.set_budget("tenant:rival", tokens=100)
    rival = guard.balances("tenant:rival")
    handle = guard.tenant("acme")
    assert handle.set_budget_terms(ACME, TOKENS, overdraft_limit=3) == 1
    with pytest.raises(al.Forbidden):
        handle.set_budget_terms("tenant:rival", TOKENS, overdraft_limit=3)
    assert guard.balances("tenant:rival") == rival
