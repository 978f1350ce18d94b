"""Quotas, access rules, caps and degradation, and shadow mode, once per store kind."""

from __future__ import annotations

import pytest

import allotment as al

from support import LLM

ACME = "tenant:acme"
TOOL = al.Action("tool.call", "web_search")


def run(name: str, **levels: str) -> al.Subject:
    return al.Subject(tenant="acme", dimensions={"run": name}, **levels)


# -- quotas -----------------------------------------------------------------------------


def test_calls_per_minute_window(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_quota(ACME, calls=3, window="minute")
    clock.advance(30_000)
    for _ in range(3):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.01))
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.01))
    decision = denied.value.decision
    assert (decision.reason, decision.scope, decision.limit) == ("QUOTA_EXCEEDED", ACME, 3)
    assert decision.retry_after_ms == 30_000
    clock.advance(30_000)  # the next minute is a new window
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.01))


def test_a_denied_call_consumes_no_quota(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_quota(ACME, calls=2, window="day")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(5))
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.1))
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.1))
    with pytest.raises(al.QuotaExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.1))
    assert guard.balances(ACME)[0].reserved == al.usd(0.2).amount


def test_runs_per_day_count_distinct_runs_first_seen(guard: al.Guard,
                                                     clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_quota(ACME, runs=2, window="day")
    for name in ("r1", "r1", "r2", "r1", "r2"):
        guard.reserve(run(name), LLM, al.usd(0.01))
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(run("r3"), LLM, al.usd(0.01))
    assert denied.value.decision.reason == "QUOTA_EXCEEDED"
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.01))  # not a run: not counted
    clock.advance(86_400_000)
    guard.reserve(run("r3"), LLM, al.usd(0.01))


def test_concurrency_is_counted_in_the_store_and_freed_on_settle(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_quota(ACME, concurrent=2)
    a = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    b = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    assert denied.value.decision.reason == "CONCURRENCY_EXCEEDED"
    assert denied.value.decision.retry_after_ms is None
    a.commit(al.usd(1))
    c = guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    c.release()
    clock.advance(1_001)  # b expires: its slot frees too
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    assert guard.get(b.id).status is al.ReservationStatus.EXPIRED


def test_quota_on_an_inner_scope_and_an_action_kind(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_quota("tenant:acme/agent:crawler", calls=1, window="hour", action_kind="tool.*")
    crawler = al.Subject(tenant="acme", agent="crawler")
    guard.reserve(crawler, TOOL, al.usd(0.01))
    guard.reserve(crawler, LLM, al.usd(0.01))  # not a tool: not counted
    guard.reserve(al.Subject(tenant="acme", agent="writer"), TOOL, al.usd(0.01))
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(crawler, TOOL, al.usd(0.01))
    assert denied.value.decision.scope == "tenant:acme/agent:crawler"
    guard.remove_quota("tenant:acme/agent:crawler", "calls", window="hour", action_kind="tool.*")
    guard.reserve(crawler, TOOL, al.usd(0.01))


def test_set_quota_needs_one_kind_and_the_right_window(guard: al.Guard) -> None:
    with pytest.raises(al.InvalidRequest, match="exactly one"):
        guard.set_quota(ACME, calls=1, runs=1, window="day")
    with pytest.raises(al.InvalidRequest, match="needs a window"):
        guard.set_quota(ACME, calls=1)
    with pytest.raises(al.InvalidRequest, match="no window"):
        guard.set_quota(ACME, concurrent=1, window="day")
    with pytest.raises(al.InvalidRequest, match="period"):
        guard.set_quota(ACME, calls=1, window="fortnight")


# -- access rules -----------------------------------------------------------------------


def test_model_allow_and_deny_lists(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_access(ACME, models_allow=["gpt-4o*", "claude-*"], models_deny=["*-preview"])
    acme = al.Subject(tenant="acme")
    guard.reserve(acme, al.Action("llm.completion", "openai:gpt-4o-mini"), al.usd(0.01))
    guard.reserve(acme, al.Action("llm.completion", "anthropic:claude-sonnet-4"), al.usd(0.01))
    for name in ("openai:o3", "openai:gpt-4o-preview"):
        with pytest.raises(al.NotAllowed) as denied:
            guard.reserve(acme, al.Action("llm.completion", name), al.usd(0.01))
        assert (denied.value.decision.reason, denied.value.decision.scope) == (
            "MODEL_NOT_ALLOWED", ACME)


def test_tool_rules_deny_tool_calls_and_cap_model_calls(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_access(ACME, tools_deny=["shell*"])
    guard.set_access("tenant:acme/agent:a", tools_allow=["web_search", "calculator"])
    agent = al.Subject(tenant="acme", agent="a")
    with pytest.raises(al.NotAllowed) as denied:
        guard.reserve(agent, al.Action("tool.call", "shell_exec"), al.usd(0.01))
    assert denied.value.decision.reason == "TOOL_NOT_ALLOWED"
    with pytest.raises(al.NotAllowed):
        guard.reserve(agent, al.Action("tool.call", "send_email"), al.usd(0.01))
    guard.reserve(agent, TOOL, al.usd(0.01))
    r = guard.reserve(agent, LLM, al.usd(0.01))  # the model is told which tools it may use
    assert r.decision.outcome is al.Outcome.ALLOW_WITH_CAPS
    assert r.caps == al.Caps(tool_allowlist=("calculator", "web_search"),
                             tool_denylist=("shell*",))


def test_access_is_checked_before_quotas_and_budgets(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=0)
    guard.set_quota(ACME, calls=0, window="day")
    guard.set_access(ACME, models_deny=["gpt-4o"])
    with pytest.raises(al.NotAllowed):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
    guard.clear_access(ACME)
    with pytest.raises(al.QuotaExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))


def test_max_tokens_per_call_caps_and_the_tightest_scope_wins(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_access(ACME, max_tokens_per_call=4096)
    guard.set_access("tenant:acme/workspace:free", max_tokens_per_call=1024)
    r = guard.reserve(al.Subject(tenant="acme", workspace="free"), LLM, al.usd(0.01))
    assert r.caps == al.Caps(max_tokens=1024)
    assert guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.01)).caps == al.Caps(
        max_tokens=4096)


# -- caps: elastic estimates and degradation ----------------------------------------------

GPT4O = al.Elastic(fixed=[al.usd("0.0025"), al.tokens(1_000)],  # 1,000 input tokens
                   per_mtok=[al.usd(10), al.tokens(1_000_000)],  # $10 per 1M output tokens
                   max_tokens=4_000, floor=500)


def test_elastic_estimate_fits_whole_when_there_is_room(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    r = guard.reserve(al.Subject(tenant="acme"), LLM, GPT4O)
    assert r.decision.outcome is al.Outcome.ALLOW
    assert r.estimate == (al.usd("0.0425"), al.tokens(5_000))


def test_elastic_estimate_shrinks_max_tokens_before_denying(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.0225")  # room for 2,000 output tokens after the input
    r = guard.reserve(al.Subject(tenant="acme"), LLM, GPT4O)
    assert r.decision.outcome is al.Outcome.ALLOW_WITH_CAPS
    assert r.caps == al.Caps(max_tokens=2_000)
    assert r.estimate == (al.usd("0.0225"), al.tokens(3_000))
    assert guard.balances(ACME)[0].remaining == 0
    r.commit([al.usd("0.01"), al.tokens(1_750)])
    guard.set_budget(ACME, usd="0.0175")  # now $0.0075 left: room for 500 tokens, the floor
    assert guard.reserve(al.Subject(tenant="acme"), LLM, GPT4O).caps == al.Caps(max_tokens=500)
    with pytest.raises(al.BudgetExceeded) as denied:  # below the floor: denied
        guard.reserve(al.Subject(tenant="acme"), LLM, GPT4O)
    assert denied.value.decision.requested == al.usd("0.0425").amount


def test_elastic_fit_uses_every_budget_and_rounds_up(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, tokens=1_800, period="minute")  # tokens are the tighter budget
    cheap = al.Elastic(fixed=[al.usd(0), al.tokens(100)],
                       per_mtok=[al.usd("0.00000075"), al.tokens(1_000_000)],
                       max_tokens=10_000, floor=1)
    r = guard.reserve(al.Subject(tenant="acme"), LLM, cheap)
    assert r.caps == al.Caps(max_tokens=1_700)
    # 1,700 tokens at 75 microcents per million is 0.1275 microcents: held as 1
    assert r.estimate == (al.Amount(al.Unit.USD_MICROCENTS, 1), al.tokens(1_800))


def test_degrade_rules_cap_before_denial(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100, period="month", degrade=[
        al.Degrade(below=0.2, max_tokens=1024), {"below": 0.05, "model": "gpt-4o-mini"}])
    acme = al.Subject(tenant="acme")
    assert guard.reserve(acme, LLM, al.usd(70)).caps is None  # 100% remaining: no caps
    r = guard.reserve(acme, LLM, al.usd(15))  # 30% remaining before this one
    assert r.caps is None
    capped = guard.reserve(acme, LLM, al.usd(10))  # 15% remaining
    assert capped.caps == al.Caps(max_tokens=1024)
    cheaper = guard.reserve(acme, LLM, al.usd(1))  # 5% remaining: not below 5%
    assert cheaper.caps == al.Caps(max_tokens=1024)
    last = guard.reserve(acme, LLM, al.usd(1))  # 4% remaining
    assert last.caps == al.Caps(max_tokens=1024, model="gpt-4o-mini")


def test_degrade_max_tokens_shrinks_an_elastic_estimate(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1, degrade=[al.Degrade(below=1.0, max_tokens=1_000)])
    guard.record(al.Subject(tenant="acme"), LLM, al.usd("0.01"))  # 99% remaining
    r = guard.reserve(al.Subject(tenant="acme"), LLM, GPT4O)
    assert r.caps == al.Caps(max_tokens=1_000)
    assert r.estimate == (al.usd("0.0125"), al.tokens(2_000))


def test_decide_shows_the_caps_without_holding(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.0225")
    decision = guard.decide(al.Subject(tenant="acme"), LLM, GPT4O)
    assert (decision.outcome, decision.caps) == (al.Outcome.ALLOW_WITH_CAPS,
                                                 al.Caps(max_tokens=2_000))
    assert guard.balances(ACME)[0].reserved == 0


# -- shadow mode ----------------------------------------------------------------------------


def test_shadow_mode_never_denies_and_records_what_would_have_been(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_quota(ACME, concurrent=1)
    guard.set_mode("acme", "shadow")
    acme = al.Subject(tenant="acme")
    first = guard.reserve(acme, LLM, al.usd(0.8))
    assert first.decision.observed is None
    second = guard.reserve(acme, LLM, al.usd(0.8))  # over the budget and the concurrency
    assert second.decision.outcome is al.Outcome.ALLOW
    assert second.decision.observed is not None
    assert second.decision.observed.reason == "CONCURRENCY_EXCEEDED"
    second.commit(al.usd(0.9))
    first.commit(al.usd(0.8))
    (b,) = guard.balances(ACME)
    assert (b.spent + b.debt, b.remaining) == (al.usd(1.7).amount, -al.usd(0.7).amount)
    observed = guard.audit("acme", types=["reservation.observed_denied"])
    assert [r.reason for r in observed] == ["CONCURRENCY_EXCEEDED"]
    guard.set_mode("acme", "enforce")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(acme, LLM, al.usd(0.01))


def test_shadow_guard_with_a_tenant_in_enforce(store: al.MemoryStore) -> None:
    guard = al.Guard(store, mode="shadow")
    guard.set_budget("tenant:a", usd=1)
    guard.set_budget("tenant:b", usd=1)
    guard.set_mode("b", "enforce")
    r = guard.reserve(al.Subject(tenant="a"), LLM, al.usd(5))
    assert r.decision.observed is not None and r.decision.observed.reason == "BUDGET_EXCEEDED"
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="b"), LLM, al.usd(5))
    unknown = guard.reserve(al.Subject(tenant="c"), LLM, al.usd(5))  # no budget at all
    assert unknown.decision.observed is not None
    assert unknown.decision.observed.reason == "BUDGET_NOT_FOUND"
    assert guard.record(al.Subject(tenant="a"), LLM, al.usd(5)).charged == (al.usd(5),)
    with pytest.raises(al.InvalidRequest, match="mode"):
        guard.set_mode("a", "observe")
