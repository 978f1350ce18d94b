"""Plans: tiers from YAML, TOML or a dict, installed and upgraded in place."""

from __future__ import annotations

from pathlib import Path

import pytest

import allotment as al

from support import LLM

PLANS = Path(__file__).resolve().parent.parent / "examples" / "plans.yaml"


def usd_balance(guard: al.Guard, scope: str, period: str | None = "month") -> al.Balance:
    (found,) = [b for b in guard.balances(scope, include_children=False)
                if b.unit is al.Unit.USD_MICROCENTS and b.period == period]
    return found


def test_the_shipped_tiers_load() -> None:
    plans = al.Plan.load_all(PLANS)
    assert set(plans) == {"free", "starter", "pro", "enterprise"}
    starter = plans["starter"]
    assert starter.budgets[0].usd == 50 and starter.budgets[1].per == "session"
    assert starter.budgets[0].degrade == (al.Degrade(below=0.2, max_tokens=512),)
    assert al.Plan.load(PLANS, "pro").budgets[0].degrade[0].model == {
        "openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
    with pytest.raises(al.InvalidRequest, match="no plan 'gold'"):
        al.Plan.load(PLANS, "gold")


def test_plans_load_from_toml_and_dict(tmp_path: Path) -> None:
    toml = tmp_path / "plans.toml"
    toml.write_text('[plans.basic]\nbudgets = [{usd = 5, period = "month"}]\n'
                    'quotas = [{calls = 10, window = "minute"}]\n')
    assert al.Plan.load(toml, "basic").quotas[0].calls == 10
    plan = al.Plan.from_dict({"budgets": [{"tokens": 1000, "period": "day"}]}, "tiny")
    assert plan.name == "tiny" and plan.budgets[0].tokens == 1000
    with pytest.raises(al.InvalidRequest, match="budgets"):
        al.Plan.from_dict({"budgets": [{"usd": "lots"}]}, "bad")
    (tmp_path / "plans.json").write_text("{}")
    with pytest.raises(al.InvalidRequest, match=r"\.yaml"):
        al.Plan.load(tmp_path / "plans.json", "x")


def test_assign_installs_budgets_quotas_and_access(guard: al.Guard) -> None:
    guard.assign_plan("acme", al.Plan.load(PLANS, "free"))
    acme = al.Subject(tenant="acme")
    assert usd_balance(guard, "tenant:acme").allocated == al.usd(10).amount
    r = guard.reserve(acme, al.Action("llm.completion", "openai:gpt-4o-mini"), al.usd(0.01))
    assert r.caps == al.Caps(max_tokens=1024)
    with pytest.raises(al.NotAllowed):
        guard.reserve(acme, LLM, al.usd(0.01))  # gpt-4o is not on the free tier
    assert guard.audit("acme", types=["plan.assigned"])[0].detail == {"plan": "free"}


def test_upgrade_adjusts_limits_in_place_and_keeps_the_months_spend(guard: al.Guard) -> None:
    guard.assign_plan("acme", al.Plan.load(PLANS, "starter"))
    session = al.Subject(tenant="acme", dimensions={"session": "s1"})
    guard.reserve(session, LLM, al.usd(2)).commit(al.usd(2))
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(session, LLM, al.usd(1))
    assert denied.value.decision.scope == "tenant:acme/session:s1"
    guard.assign_plan("acme", al.Plan.load(PLANS, "pro"))
    month = usd_balance(guard, "tenant:acme")
    assert (month.allocated, month.spent) == (al.usd(500).amount, al.usd(2).amount)
    guard.reserve(session, LLM, al.usd(8))  # the session cap is now $10
    assert [b.period for b in guard.balances("tenant:acme", include_children=False)] == [
        "month", "day"]
    guard.assign_plan("acme", al.Plan.load(PLANS, "starter"))  # downgrade drops the token cap
    assert [b.period for b in guard.balances("tenant:acme", include_children=False)] == [
        "month"]


def test_default_plan_provisions_a_tenant_on_first_sight(store: al.MemoryStore) -> None:
    guard = al.Guard(store, default_plan=al.Plan.load(PLANS, "starter"))
    r = guard.reserve(al.Subject(tenant="newco", dimensions={"session": "s"}), LLM, al.usd(1))
    assert [b.scope for b in r.balances] == ["tenant:newco", "tenant:newco/session:s"]
    guard.set_budget("tenant:newco", usd=70, period="month")  # an operator's change sticks
    guard.reserve(al.Subject(tenant="newco"), LLM, al.usd(1))
    assert usd_balance(guard, "tenant:newco").allocated == al.usd(70).amount
    with pytest.raises(al.InvalidRequest, match="Plan"):
        al.Guard(store, default_plan="starter")  # type: ignore[arg-type]


def test_a_shadow_plan_sets_the_tenant_mode(guard: al.Guard) -> None:
    plan = al.Plan(name="trial", mode="shadow", budgets=[al.BudgetSpec(usd=1)])
    guard.assign_plan("acme", plan)
    r = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(5))
    assert r.decision.observed is not None
