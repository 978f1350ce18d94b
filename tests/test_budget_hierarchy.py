"""A child budget larger than its parent's (same unit and period) is accepted as set, with a
`BudgetHierarchyWarning` that names both: the parent refuses first, so the child's extra
room can never be spent. Runs on every store kind, sync and async."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import allotment as al

ACME = "tenant:acme"
WORKSPACE = "tenant:acme/workspace:w"
AGENT = "tenant:acme/workspace:w/agent:a"
PLANS = Path(__file__).resolve().parent.parent / "examples" / "plans.yaml"


def _hierarchy_warnings(call: object) -> list[str]:
    """The messages of the hierarchy warnings that `call()` issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()  # type: ignore[operator]
    return [str(w.message) for w in caught if issubclass(w.category, al.BudgetHierarchyWarning)]


def _allocated(guard: al.Guard, scope: str) -> int:
    (row,) = guard.balances(scope, include_children=False)
    return row.allocated


def test_a_child_larger_than_its_parent_warns_and_is_stored_as_set(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    with pytest.warns(al.BudgetHierarchyWarning,
                      match=r"tenant:acme/workspace:w .*\$20\.00.* tenant:acme .*\$10\.00"):
        rows = guard.set_budget(WORKSPACE, usd=20, period="month")
    assert [row.allocated for row in rows] == [al.usd(20).amount]
    assert _allocated(guard, WORKSPACE) == al.usd(20).amount


def test_within_the_parent_or_in_another_period_or_unit_says_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    assert _hierarchy_warnings(lambda: guard.set_budget(WORKSPACE, usd=10, period="month")) == []
    assert _hierarchy_warnings(lambda: guard.set_budget(WORKSPACE, usd=50, period="day")) == []
    assert _hierarchy_warnings(lambda: guard.set_budget(WORKSPACE, tokens=10**6)) == []


def test_lowering_a_parent_below_a_child_warns_about_the_child(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_budget(WORKSPACE, usd=50)
    found = _hierarchy_warnings(lambda: guard.set_budget(ACME, usd=20))
    assert len(found) == 1 and WORKSPACE in found[0] and "$20.00" in found[0]
    assert _allocated(guard, ACME) == al.usd(20).amount


def test_the_nearest_budgeted_ancestor_is_the_parent(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    found = _hierarchy_warnings(lambda: guard.set_budget(AGENT, usd=15))
    assert len(found) == 1 and "tenant:acme " in found[0]
    with pytest.warns(al.BudgetHierarchyWarning):  # between the two, larger than the tenant
        guard.set_budget(WORKSPACE, usd=20)
    assert _hierarchy_warnings(lambda: guard.set_budget(AGENT, usd=18)) == []


def test_a_per_run_budget_larger_than_its_scope_warns(guard: al.Guard) -> None:
    guard.set_budget(AGENT, usd=10)
    found = _hierarchy_warnings(lambda: guard.set_budget(AGENT, usd=25, per="run"))
    assert len(found) == 1 and "every run" in found[0] and "$25.00" in found[0]


def test_the_tenant_handle_warns_too(guard: al.Guard) -> None:
    acme = guard.tenant("acme")
    acme.set_budget(ACME, usd=1)
    with pytest.warns(al.BudgetHierarchyWarning):
        acme.set_budget(WORKSPACE, usd=2)


def test_a_plan_whose_session_budget_passes_the_tenant_budget_warns(guard: al.Guard) -> None:
    plan = al.Plan(name="odd", budgets=[al.BudgetSpec(usd=5), al.BudgetSpec(usd=10,
                                                                            per="session")])
    found = _hierarchy_warnings(lambda: guard.assign_plan("acme", plan))
    assert len(found) == 1 and "every session" in found[0]
    assert guard.balances(ACME)[0].allocated == al.usd(5).amount


def test_the_shipped_plans_are_well_formed(guard: al.Guard) -> None:
    for name, plan in al.Plan.load_all(PLANS).items():
        assert _hierarchy_warnings(lambda p=plan: guard.assign_plan("acme", p)) == [], name
