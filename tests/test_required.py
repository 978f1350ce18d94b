"""Required dimensions: a call that lacks a dimension its scope requires (through a budget
template declared `required`, a scope's access rule, or a plan) is denied
`DIMENSION_REQUIRED`, never checked against the tenant alone. Once per store kind and way of
calling."""

from __future__ import annotations

from pathlib import Path

import pytest

import allotment as al

from support import LLM

AGENT = "tenant:acme/workspace:production/workflow:document-analysis/agent:analyzer"
ANALYZER = dict(tenant="acme", workspace="production", workflow="document-analysis",
                agent="analyzer")


def analyzer(**dimensions: str) -> al.Subject:
    return al.Subject(**ANALYZER, dimensions=dimensions)


def per_run(guard: al.Guard, *, required: bool = True) -> None:
    guard.set_budget("tenant:acme", usd=2000, period="month")
    guard.set_budget(AGENT, usd=25, per="run", required=required)


def usd(guard: al.Guard, scope: str) -> al.Balance:
    (found,) = [b for b in guard.balances(scope, include_children=False)
                if b.unit is al.Unit.USD_MICROCENTS]
    return found


def test_a_required_run_template_denies_a_call_without_a_run(guard: al.Guard) -> None:
    per_run(guard)
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer(), LLM, al.usd(30))
    decision = denied.value.decision
    assert decision.reason == al.Reason.DIMENSION_REQUIRED == "DIMENSION_REQUIRED"
    assert decision.scope == AGENT and decision.missing_dimensions == ("run",)
    assert usd(guard, "tenant:acme").reserved == 0  # nothing held on the tenant either
    # the same call with a run is checked against the run's $25
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(analyzer(run="run-7a3f"), LLM, al.usd(30))
    guard.reserve(analyzer(run="run-7a3f"), LLM, al.usd(5)).commit(al.usd(5))
    assert usd(guard, f"{AGENT}/run:run-7a3f").spent == al.usd(5).amount


def test_the_message_names_the_dimension_and_how_to_supply_it(guard: al.Guard) -> None:
    per_run(guard)
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer(user="u-1"), LLM, al.usd(1))
    text = str(denied.value)
    assert text.startswith(f"{AGENT}: DIMENSION_REQUIRED")
    assert "'run'" in text and "al.scope(run=...)" in text
    assert "Subject(dimensions={'run': ...})" in text


def test_without_required_a_template_still_lets_a_run_less_call_through(
        guard: al.Guard) -> None:
    per_run(guard, required=False)
    guard.reserve(analyzer(), LLM, al.usd(30)).release()  # checked against the tenant only
    per_run(guard, required=True)  # declaring it later applies at once
    with pytest.raises(al.Denied, match="DIMENSION_REQUIRED"):
        guard.reserve(analyzer(), LLM, al.usd(1))
    per_run(guard, required=False)  # and so does taking it back
    guard.reserve(analyzer(), LLM, al.usd(1)).release()


def test_only_calls_under_the_template_scope_need_the_dimension(guard: al.Guard) -> None:
    per_run(guard)
    other = al.Subject(tenant="acme", workspace="production", agent="writer")
    guard.reserve(other, LLM, al.usd(1)).release()
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1)).release()


def test_a_scope_requires_dimensions_through_its_access_rules(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=100)
    guard.set_access("tenant:acme/workspace:production", required_dimensions=["user", "run"],
                     max_tokens_per_call=512)
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer(run="r-1"), LLM, al.usd(1))
    assert denied.value.decision.missing_dimensions == ("user",)
    assert denied.value.decision.scope == "tenant:acme/workspace:production"
    with pytest.raises(al.Denied) as both:
        guard.reserve(analyzer(), LLM, al.usd(1))
    assert both.value.decision.missing_dimensions == ("run", "user")
    assert "'run', 'user'" in str(both.value)
    r = guard.reserve(analyzer(run="r-1", user="u-1"), LLM, al.usd(1))
    assert r.caps == al.Caps(max_tokens=512)
    r.release()
    guard.clear_access("tenant:acme/workspace:production")
    guard.reserve(analyzer(), LLM, al.usd(1)).release()


def test_the_required_check_comes_before_access_rules_and_quotas(guard: al.Guard) -> None:
    per_run(guard)
    guard.set_access("tenant:acme", models_deny=["*"])
    guard.set_quota("tenant:acme", calls=0, window="minute")
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer(), LLM, al.usd(1))
    assert denied.value.decision.reason == "DIMENSION_REQUIRED"


def test_a_denial_is_audited_counted_notified_and_decide_answers_it(guard: al.Guard) -> None:
    per_run(guard)
    notes: list[al.Notification] = []
    guard.on("reservation.denied", notes.append)
    decision = guard.decide(analyzer(), LLM, al.usd(1))
    assert decision.reason == "DIMENSION_REQUIRED" and decision.missing_dimensions == ("run",)
    assert guard.audit("acme", types=["reservation.denied"]) == ()  # decide changes nothing
    with pytest.raises(al.Denied):
        guard.reserve(analyzer(), LLM, al.usd(1))
    (record,) = guard.audit("acme", types=["reservation.denied"])
    assert record.reason == "DIMENSION_REQUIRED" and record.scopes == (AGENT,)
    assert record.detail["missing_dimensions"] == ["run"]
    assert [n.reason for n in notes] == ["DIMENSION_REQUIRED"]
    rows = {r.scope: r.denials for r in guard.report("acme", period="month")}
    assert rows[AGENT] == {"DIMENSION_REQUIRED": 1}  # where the requirement is, not above
    assert rows.get("tenant:acme", {}) == {}


def test_record_without_a_required_dimension_is_denied(guard: al.Guard) -> None:
    per_run(guard)
    with pytest.raises(al.Denied) as denied:
        guard.record(analyzer(), LLM, al.usd(1))
    assert denied.value.decision.reason == "DIMENSION_REQUIRED"
    assert denied.value.decision.missing_dimensions == ("run",)
    assert usd(guard, "tenant:acme").spent == 0
    guard.record(analyzer(run="r-1"), LLM, al.usd(1))
    assert usd(guard, f"{AGENT}/run:r-1").spent == al.usd(1).amount


def test_shadow_mode_records_the_would_be_denial_and_lets_the_call_through(
        guard: al.Guard) -> None:
    per_run(guard)
    guard.set_mode("acme", "shadow")
    r = guard.reserve(analyzer(), LLM, al.usd(1))
    assert r.decision.allowed and r.decision.observed is not None
    assert r.decision.observed.reason == "DIMENSION_REQUIRED"
    assert r.decision.observed.missing_dimensions == ("run",)
    r.commit(al.usd(1))
    assert usd(guard, "tenant:acme").spent == al.usd(1).amount
    (observed,) = guard.audit("acme", types=["reservation.observed_denied"])
    assert observed.reason == "DIMENSION_REQUIRED" and observed.scopes == (AGENT,)
    guard.record(analyzer(), LLM, al.usd(1))  # a record in shadow mode is never refused
    assert usd(guard, "tenant:acme").spent == al.usd(2).amount


PLAN = """
plans:
  strict:
    budgets:
      - {usd: 100, period: month}
      - {scope: "workspace:production/workflow:document-analysis/agent:analyzer",
         usd: 25, per: run, required: true}
    access:
      - {scope: "workspace:production", required_dimensions: [user]}
  loose:
    budgets:
      - {usd: 100, period: month}
"""


def test_a_plan_declares_required_dimensions_in_yaml(guard: al.Guard, tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(PLAN)
    plans = al.Plan.load_all(path)
    assert plans["strict"].budgets[1].required is True
    assert plans["strict"].access[0].required_dimensions == ("user",)
    guard.assign_plan("acme", plans["strict"])
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer(), LLM, al.usd(1))
    assert denied.value.decision.missing_dimensions == ("run", "user")
    guard.reserve(analyzer(run="r-1", user="u-1"), LLM, al.usd(1)).release()
    guard.assign_plan("acme", plans["loose"])  # a plan without them lifts them
    guard.reserve(analyzer(), LLM, al.usd(1)).release()


def test_a_plan_from_a_dict_takes_the_same_fields(guard: al.Guard) -> None:
    plan = al.Plan.from_dict({"budgets": [{"usd": 10}, {"usd": 1, "per": "session",
                                                        "required": True}]}, "chat")
    guard.assign_plan("acme", plan)
    with pytest.raises(al.Denied) as denied:
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    assert denied.value.decision.missing_dimensions == ("session",)
    assert denied.value.decision.scope == "tenant:acme"


def test_bad_required_declarations_are_refused(guard: al.Guard) -> None:
    with pytest.raises(al.InvalidRequest, match="required=True needs per="):
        guard.set_budget("tenant:acme", usd=1, required=True)
    with pytest.raises(al.InvalidRequest, match="required"):
        guard.set_budget("tenant:acme", usd=1, per="run", required="yes")  # type: ignore[arg-type]
    with pytest.raises(al.InvalidRequest, match="scope level"):
        guard.set_access("tenant:acme", required_dimensions=["agent"])
    with pytest.raises(al.InvalidRequest, match="required_dimensions"):
        guard.set_access("tenant:acme", required_dimensions=["Run Id"])
    with pytest.raises(al.InvalidRequest, match="required_dimensions"):
        guard.set_access("tenant:acme", required_dimensions="run")
    with pytest.raises(al.InvalidRequest, match="budgets"):
        al.Plan.from_dict({"budgets": [{"usd": 1, "required": True}]}, "bad")
    assert guard.balances("tenant:acme") == ()
