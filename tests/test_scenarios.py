"""The seed's scenarios, end to end on the public API, once per store kind."""

from __future__ import annotations

from pathlib import Path

import pytest

import allotment as al

from support import LLM

PLANS = al.Plan.load_all(Path(__file__).resolve().parent.parent / "examples" / "plans.yaml")


def test_a_runaway_agent_loop_is_stopped_at_its_own_budget(guard: al.Guard) -> None:
    """(a) Fifty tenants share the platform; one loops. It stops at its own budget (its run
    first) and every other tenant keeps working with its balance untouched."""
    tenants = [f"t{i:02d}" for i in range(50)]
    for name in tenants:
        guard.assign_plan(name, PLANS["starter"])
        guard.set_budget(f"tenant:{name}/workflow:ingest", usd=5, per="run")
    stops: list[str] = []
    for attempt in range(100):  # the loop restarts a new run whenever one is stopped
        loop = al.Subject(tenant="t00", workflow="ingest", dimensions={"run": f"r{attempt}"})
        try:
            while True:
                guard.reserve(loop, LLM, al.usd(1)).commit(al.usd(1))
        except al.BudgetExceeded as stopped:
            stops.append(stopped.decision.scope or "")
            if stopped.decision.scope == "tenant:t00":
                break
    # $50 a month is ten $5 runs: nine stop at their run budget, the tenth at the tenant's
    assert stops[:9] == [f"tenant:t00/workflow:ingest/run:r{i}" for i in range(9)]
    assert stops[9:] == ["tenant:t00"]
    for name in tenants[1:]:
        job = al.Subject(tenant=name, workflow="ingest", dimensions={"run": "job-1"})
        guard.reserve(job, LLM, al.usd("0.40")).commit(al.usd("0.30"))
        (month,) = guard.balances(f"tenant:{name}", include_children=False)
        assert (month.spent, month.remaining) == (al.usd("0.30").amount,
                                                  al.usd("49.70").amount)


def test_b_fifty_concurrent_agents_hit_the_concurrency_quota(guard: al.Guard) -> None:
    """(b) A tenant with 50 concurrent agents hits its quota; others are unaffected."""
    for name in ("busy", "calm"):
        guard.assign_plan(name, PLANS["pro"])
    held = [guard.reserve(al.Subject(tenant="busy", agent=f"a{i}"), LLM, al.usd("0.10"))
            for i in range(50)]
    with pytest.raises(al.QuotaExceeded) as denied:
        guard.reserve(al.Subject(tenant="busy", agent="a50"), LLM, al.usd("0.10"))
    assert (denied.value.decision.reason, denied.value.decision.scope) == (
        "CONCURRENCY_EXCEEDED", "tenant:busy")
    calm = [guard.reserve(al.Subject(tenant="calm", agent=f"a{i}"), LLM, al.usd("0.10"))
            for i in range(10)]
    assert len(calm) == 10
    held[0].commit(al.usd("0.05"))
    guard.reserve(al.Subject(tenant="busy", agent="a50"), LLM, al.usd("0.10"))


def test_c_tiers_cap_sessions_degrade_then_exhaust(guard: al.Guard) -> None:
    """(c) Session caps, degradation before denial, monthly exhaustion, per tier."""
    guard.assign_plan("small", PLANS["starter"])
    guard.assign_plan("big", PLANS["pro"])

    def session(tenant: str, n: int) -> al.Subject:
        return al.Subject(tenant=tenant, dimensions={"session": f"s{n}"})

    with pytest.raises(al.BudgetExceeded) as capped:  # Starter: $2 per session
        guard.reserve(session("small", 0), LLM, al.usd("2.01"))
    assert capped.value.decision.scope == "tenant:small/session:s0"
    guard.reserve(session("big", 0), LLM, al.usd(9)).commit(al.usd(9))  # Pro: $10

    caps_seen = []
    for n in range(100):  # Starter spends its $50 month, $1.90 a session
        try:
            r = guard.reserve(session("small", n), LLM, al.usd("1.90"))
        except al.BudgetExceeded as denied:
            assert denied.decision.scope == "tenant:small"
            break
        caps_seen.append(r.caps)
        r.commit(al.usd("1.90"))
    assert caps_seen[0] is None
    assert caps_seen[-1] == al.Caps(max_tokens=512)  # shorter answers in the last 20%
    assert caps_seen.index(al.Caps(max_tokens=512)) == 22  # $41.80 spent: 16.4% left

    for n in range(1, 200):  # Pro degrades to a cheaper model instead
        r = guard.reserve(session("big", n), LLM, al.usd(9))
        r.commit(al.usd(9))
        if r.caps is not None:
            assert r.caps.model == "gpt-4o-mini"
            break
    assert n == 45  # $414 spent before it: below 20% of $500 remains


def test_d_departments_share_an_enterprise_budget_and_reallocate(guard: al.Guard) -> None:
    """(d) Marketing exhausts its workspace; Engineering and Support continue; the admin
    moves budget over and Marketing resumes."""
    guard.assign_plan("big", PLANS["enterprise"])
    departments = {"marketing": 500, "engineering": 5_000, "support": 1_000}
    for name, limit in departments.items():
        guard.set_budget(f"tenant:big/workspace:{name}", usd=limit, period="month")
    marketing = al.Subject(tenant="big", workspace="marketing")
    guard.reserve(marketing, LLM, al.usd(500)).commit(al.usd(500))
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(marketing, LLM, al.usd(1))
    assert denied.value.decision.scope == "tenant:big/workspace:marketing"
    for other in ("engineering", "support"):
        guard.reserve(al.Subject(tenant="big", workspace=other), LLM, al.usd(10)).commit(
            al.usd(10))
    guard.tenant("big").transfer("tenant:big/workspace:engineering",
                                 "tenant:big/workspace:marketing", al.usd(500))
    guard.reserve(marketing, LLM, al.usd(100)).commit(al.usd(100))
    by_scope = {b.scope: b for b in guard.balances("tenant:big")}
    assert by_scope["tenant:big/workspace:marketing"].remaining == al.usd(400).amount
    assert by_scope["tenant:big/workspace:engineering"].allocated == al.usd(4_500).amount
    assert by_scope["tenant:big"].spent == al.usd(620).amount
    assert guard.audit("big", types=["budget.transferred"])[0].scopes == (
        "tenant:big/workspace:engineering", "tenant:big/workspace:marketing")


def test_e_shadow_mode_reports_what_enforce_would_have_denied(clock: al.ManualClock) -> None:
    """(e) The same traffic in both modes: shadow lets it all through and reports exactly
    the denials that enforce mode makes."""
    from support.stores import STORE_KINDS, make_store

    def traffic(guard: al.Guard) -> tuple[int, int]:
        guard.set_budget("tenant:acme", usd=10, period="month")
        guard.set_quota("tenant:acme", calls=30, window="minute")
        allowed = denied = 0
        for i in range(40):
            try:
                guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1)).commit(
                    al.usd("0.40"))
                allowed += 1
            except al.Denied:
                denied += 1
            if i % 10 == 9:
                clock.advance(60_000)
        return allowed, denied

    for kind in STORE_KINDS:
        enforce = al.Guard(make_store(kind, clock))
        shadow = al.Guard(make_store(kind, clock), mode="shadow")
        allowed, denied = traffic(enforce)
        assert allowed + denied == 40
        assert traffic(shadow) == (40, 0)
        enforced = enforce.report("acme")[0].denials
        observed = shadow.report("acme")[0].denials
        assert sum(enforced.values()) == denied > 0
        assert {k.removeprefix("observed:"): v for k, v in observed.items()} == enforced
        (spent,) = shadow.balances("tenant:acme")
        assert spent.spent + spent.debt == al.usd(16).amount  # all 40 calls were tracked
