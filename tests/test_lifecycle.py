"""Reservation lifecycle (Cycles semantics) through the public API, once per store kind."""

from __future__ import annotations

import pytest

import allotment as al

from support import LLM

ACME = "tenant:acme"
ANALYZER = "tenant:acme/workspace:production/workflow:document-analysis/agent:analyzer"


def subject(run: str | None = None, **levels: str) -> al.Subject:
    dims = {"run": run} if run else {}
    return al.Subject(tenant="acme", dimensions=dims, **levels)


def analyzer(run: str = "run-7a3f") -> al.Subject:
    return al.Subject(tenant="acme", workspace="production", workflow="document-analysis",
                      agent="analyzer", dimensions={"run": run})


def balance(guard: al.Guard, scope: str, unit: al.Unit = al.Unit.USD_MICROCENTS) -> al.Balance:
    (found,) = [b for b in guard.balances(scope) if b.scope == scope and b.unit is unit]
    return found


def assert_identity(guard: al.Guard, scope: str = ACME) -> None:
    for b in guard.balances(scope):
        assert b.allocated == b.remaining + b.reserved + b.spent + b.debt, b


# -- reserve ----------------------------------------------------------------------------


def test_reserve_holds_the_estimate_on_every_budgeted_scope(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_budget("tenant:acme/workspace:production", usd=10)
    r = guard.reserve(subject(workspace="production", agent="x"), LLM, al.usd(2))
    assert r.decision.outcome is al.Outcome.ALLOW
    assert r.id.startswith("acme:")
    assert [b.scope for b in r.balances] == [ACME, "tenant:acme/workspace:production"]
    assert all(b.reserved == al.usd(2).amount for b in r.balances)
    assert balance(guard, ACME).remaining == al.usd(98).amount
    assert guard.get(r.id).status is al.ReservationStatus.ACTIVE
    assert guard.get(r.id).scopes == (ACME, "tenant:acme/workspace:production")


def test_balances_of_a_result_are_those_right_after_its_step(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    r = guard.reserve(subject(), LLM, al.usd(2))
    committed = r.commit(al.usd(1))
    later = guard.reserve(subject(), LLM, al.usd(5))
    later.release()
    # read only now, after later steps moved the ledger: each shows its own moment
    assert [(b.reserved, b.spent) for b in r.balances] == [(al.usd(2).amount, 0)]
    assert [(b.reserved, b.spent) for b in committed.balances] == [(0, al.usd(1).amount)]
    assert [(b.reserved, b.spent) for b in later.balances] == [(al.usd(5).amount,
                                                                  al.usd(1).amount)]


def test_estimate_equal_to_remaining_fits_and_one_more_does_not(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=1000)
    guard.reserve(subject(), LLM, al.tokens(400))
    guard.reserve(subject(), LLM, al.tokens(600))  # exactly the remaining
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, al.tokens(1))
    decision = denied.value.decision
    assert (decision.reason, decision.scope, decision.unit) == (
        al.Reason.BUDGET_EXCEEDED, ACME, al.Unit.TOKENS)
    assert (decision.remaining, decision.limit, decision.requested) == (0, 1000, 1)
    assert decision.retry_after_ms is None  # no period: nothing frees it by itself


def test_zero_estimate_is_legal(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=0)
    r = guard.reserve(subject(), LLM, al.tokens(0))
    assert r.commit(al.tokens(0)).charged == (al.tokens(0),)


def test_denial_names_the_innermost_blocking_scope_and_leaves_others_untouched(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1500)
    guard.set_budget(ANALYZER, usd=25, per="run")
    r = guard.reserve(analyzer(), LLM, al.usd(24.88))
    r.commit(al.usd(24.88))
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(analyzer(), LLM, al.usd(0.5))
    decision = denied.value.decision
    assert decision.scope == f"{ANALYZER}/run:run-7a3f"
    assert decision.remaining == al.usd(0.12).amount
    assert "remaining $0.12" in str(denied.value) and "budget $25.00" in str(denied.value)
    # the tenant still has $1,475.12 and another run of the same agent proceeds
    assert balance(guard, ACME).remaining == al.usd("1475.12").amount
    other = guard.reserve(analyzer("run-8b4c"), LLM, al.usd(10))
    assert [b.scope for b in other.balances] == [ACME, f"{ANALYZER}/run:run-8b4c"]
    assert_identity(guard)


def test_first_failure_in_canonical_order_decides(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=10)
    guard.set_budget("tenant:acme/workspace:w", tokens=5)
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(workspace="w"), LLM, al.tokens(20))
    assert denied.value.decision.scope == ACME


def test_multi_unit_estimate_is_checked_and_charged_in_one_step(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, tokens=1000, period="day")
    r = guard.reserve(subject(), LLM, [al.usd(1), al.tokens(800)])
    assert {b.unit: b.reserved for b in r.balances} == {
        al.Unit.USD_MICROCENTS: al.usd(1).amount, al.Unit.TOKENS: 800}
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, [al.usd(1), al.tokens(300)])
    assert denied.value.decision.unit is al.Unit.TOKENS
    assert denied.value.decision.retry_after_ms == 12 * 3600 * 1000  # the day bucket ends
    assert balance(guard, ACME).reserved == al.usd(1).amount  # the dollars were not held
    result = r.commit([al.usd(0.5), al.tokens(700)])
    assert result.charged == (al.usd(0.5), al.tokens(700))
    assert result.released == (al.usd(0.5), al.tokens(100))


def test_units_without_any_budget_are_skipped_but_some_budget_must_apply(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    r = guard.reserve(subject(), LLM, [al.usd(1), al.tokens(10**6)])
    assert [b.unit for b in r.balances] == [al.Unit.USD_MICROCENTS]
    with pytest.raises(al.UnitMismatch, match="TOKENS"):
        guard.reserve(subject(), LLM, al.tokens(5))
    with pytest.raises(al.Denied) as denied:
        guard.reserve(al.Subject(tenant="nobody"), LLM, al.usd(1))
    assert denied.value.decision.reason == al.Reason.BUDGET_NOT_FOUND
    assert type(denied.value) is al.Denied


def test_a_template_alone_needs_its_dimension(guard: al.Guard) -> None:
    guard.set_budget(ANALYZER, usd=25, per="run")
    with pytest.raises(al.Denied) as denied:
        guard.reserve(analyzer().model_copy(update={"dimensions": {}}), LLM, al.usd(1))
    assert denied.value.decision.reason == al.Reason.BUDGET_NOT_FOUND
    assert guard.reserve(analyzer(), LLM, al.usd(1)).balances[0].scope.endswith("run:run-7a3f")


def test_per_user_template_on_the_tenant(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100, per="user", period="month")
    u42 = al.Subject(tenant="acme", dimensions={"user": "u-42"})
    u43 = al.Subject(tenant="acme", dimensions={"user": "u-43"})
    guard.reserve(u42, LLM, al.usd(100)).commit(al.usd(100))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(u42, LLM, al.usd(0.01))
    guard.reserve(u43, LLM, al.usd(99))
    scopes = {b.scope: b.spent for b in guard.balances(ACME)}
    assert scopes == {"tenant:acme/user:u-42": al.usd(100).amount, "tenant:acme/user:u-43": 0}
    assert [b.scope for b in guard.balances("tenant:acme/user:u-42")] == ["tenant:acme/user:u-42"]


def test_decide_answers_like_reserve_and_changes_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)
    before = guard.balances(ACME)
    assert guard.decide(subject(), LLM, al.tokens(100)).outcome is al.Outcome.ALLOW
    no = guard.decide(subject(), LLM, al.tokens(101))
    assert (no.outcome, no.reason, no.remaining) == (al.Outcome.DENY, "BUDGET_EXCEEDED", 100)
    missing = guard.decide(al.Subject(tenant="other"), LLM, al.tokens(1))
    assert missing.reason == al.Reason.BUDGET_NOT_FOUND
    assert guard.balances(ACME) == before


# -- commit -----------------------------------------------------------------------------


def test_commit_below_estimate_returns_the_difference(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    r = guard.reserve(subject(), LLM, al.usd(0.05))
    result = r.commit(al.usd(0.031))
    assert result.status is al.ReservationStatus.COMMITTED
    assert (result.charged, result.released) == ((al.usd(0.031),), (al.usd(0.019),))
    b = balance(guard, ACME)
    assert (b.reserved, b.spent) == (0, al.usd(0.031).amount)
    assert guard.get(r.id).charged == (al.usd(0.031),)
    assert r.settled and r.status is al.ReservationStatus.COMMITTED


def test_commit_by_id_from_elsewhere(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    rid = guard.reserve(subject(), LLM, al.usd(1)).id
    assert guard.commit(rid, al.usd(1)).charged == (al.usd(1),)
    with pytest.raises(al.ReservationFinalized):
        guard.commit(rid, al.usd(1))
    with pytest.raises(al.ReservationFinalized):
        guard.release(rid)


def test_commit_leaving_a_unit_out_charges_its_estimate(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, tokens=1000)
    r = guard.reserve(subject(), LLM, [al.usd(1), al.tokens(100)])
    assert r.commit(al.usd(0.5)).charged == (al.usd(0.5), al.tokens(100))
    r2 = guard.reserve(subject(), LLM, al.usd(1))
    with pytest.raises(al.UnitMismatch, match="TOKENS"):
        r2.commit([al.usd(1), al.tokens(5)])
    assert guard.get(r2.id).status is al.ReservationStatus.ACTIVE


def test_overage_reject_refuses_and_changes_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)
    r = guard.reserve(subject(), LLM, al.tokens(60), overage_policy="REJECT")
    guard.reserve(subject(), LLM, al.tokens(30))
    with pytest.raises(al.BudgetExceeded) as denied:
        r.commit(al.tokens(71))  # 11 over the estimate, 10 remain
    assert denied.value.decision.requested == 11
    b = balance(guard, ACME, al.Unit.TOKENS)
    assert (b.reserved, b.spent) == (90, 0)
    assert guard.get(r.id).status is al.ReservationStatus.ACTIVE
    assert r.commit(al.tokens(70)).charged == (al.tokens(70),)  # exactly what remains fits


# A child larger than its parent on purpose:
@pytest.mark.filterwarnings("ignore::allotment.BudgetHierarchyWarning")
def test_overage_allow_if_available_charges_what_remains_and_flags(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)
    guard.set_budget("tenant:acme/workspace:w", tokens=1000)
    r = guard.reserve(subject(workspace="w"), LLM, al.tokens(60))
    result = r.commit(al.tokens(150))  # 90 over, only 40 remain at the tenant
    assert result.charged == (al.tokens(100),)
    tenant, workspace = result.balances
    assert (tenant.spent, tenant.remaining, tenant.is_over_limit) == (100, 0, True)
    assert (workspace.spent, workspace.is_over_limit) == (100, False)  # it could cover
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, al.tokens(0))
    assert denied.value.decision.reason == al.Reason.OVERDRAFT_LIMIT_EXCEEDED
    guard.fund(ACME, "CREDIT", al.tokens(50))  # funding clears the flag
    assert not balance(guard, ACME, al.Unit.TOKENS).is_over_limit
    guard.reserve(subject(), LLM, al.tokens(50))
    assert_identity(guard)


def test_overage_with_overdraft_becomes_debt_up_to_the_limit(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, overdraft_limit=30,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    r = guard.reserve(subject(), LLM, al.tokens(90))
    result = r.commit(al.tokens(120))
    assert result.charged == (al.tokens(120),)
    (b,) = result.balances
    assert (b.spent, b.debt, b.remaining, b.is_over_limit) == (100, 20, -20, False)
    assert_identity(guard)
    r2 = guard.record(subject(), LLM, al.tokens(10))  # records are not blocked by debt
    assert r2.charged == (al.tokens(10),)
    assert balance(guard, ACME, al.Unit.TOKENS).debt == 30
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.record(subject(), LLM, al.tokens(1))
    assert denied.value.decision.reason == al.Reason.OVERDRAFT_LIMIT_EXCEEDED
    guard.fund(ACME, "REPAY_DEBT", al.tokens(30))
    assert balance(guard, ACME, al.Unit.TOKENS).debt == 0


def test_debt_without_overdraft_allowance_blocks_reservations(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, overdraft_limit=50,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    guard.reserve(subject(), LLM, al.tokens(100)).commit(al.tokens(110))
    guard.set_budget(ACME, tokens=100, overdraft_limit=0)  # allowance withdrawn
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, al.tokens(1))
    assert denied.value.decision.reason == al.Reason.OVERDRAFT_LIMIT_EXCEEDED


def test_overdraft_beyond_limit_is_refused_whole(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, overdraft_limit=5,
                     overage_policy="ALLOW_WITH_OVERDRAFT")
    r = guard.reserve(subject(), LLM, al.tokens(100))
    with pytest.raises(al.BudgetExceeded) as denied:
        r.commit(al.tokens(106))
    assert denied.value.decision.reason == al.Reason.OVERDRAFT_LIMIT_EXCEEDED
    assert balance(guard, ACME, al.Unit.TOKENS).reserved == 100
    assert r.commit(al.tokens(105)).charged == (al.tokens(105),)


def test_reservation_policy_overrides_the_budgets(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100, overage_policy="REJECT")
    r = guard.reserve(subject(), LLM, al.tokens(50), overage_policy="ALLOW_IF_AVAILABLE")
    assert r.commit(al.tokens(500)).charged == (al.tokens(100),)


# -- release, extend, expiry ------------------------------------------------------------


def test_release_returns_the_whole_estimate(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    r = guard.reserve(subject(), LLM, al.usd(4))
    result = r.release("user cancelled")
    assert (result.status, result.released) == (al.ReservationStatus.RELEASED, (al.usd(4),))
    assert balance(guard, ACME).remaining == al.usd(10).amount
    with pytest.raises(al.ReservationFinalized):
        r.commit(al.usd(1))


def test_context_manager_releases_on_error_and_charges_when_left_open(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    with pytest.raises(RuntimeError), guard.reserve(subject(), LLM, al.usd(4)) as failed:
        raise RuntimeError("provider down")
    assert guard.get(failed.id).status is al.ReservationStatus.RELEASED
    with guard.reserve(subject(), LLM, al.usd(3)) as unsettled:
        pass
    assert guard.get(unsettled.id).charged == (al.usd(3),)
    with guard.reserve(subject(), LLM, al.usd(3)) as settled:
        settled.commit(al.usd(1))
    assert balance(guard, ACME).spent == al.usd(4).amount


def test_expiry_returns_the_estimate_lazily_on_the_next_operation(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=100)
    r = guard.reserve(subject(), LLM, al.tokens(100), ttl_ms=1_000, grace_ms=500)
    clock.advance(1_500)  # at expires_at + grace: still within grace
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(subject(), LLM, al.tokens(1))
    clock.advance(1)
    guard.reserve(subject(), LLM, al.tokens(100))  # the abandoned hold came back first
    assert guard.get(r.id).status is al.ReservationStatus.EXPIRED
    with pytest.raises(al.ReservationExpired):
        r.commit(al.tokens(10))
    with pytest.raises(al.ReservationExpired):
        r.release()


def test_commit_within_grace_succeeds_and_after_it_fails(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=100)
    early = guard.reserve(subject(), LLM, al.tokens(10), ttl_ms=1_000, grace_ms=2_000)
    late = guard.reserve(subject(), LLM, al.tokens(10), ttl_ms=1_000, grace_ms=2_000)
    clock.advance(2_500)
    assert early.commit(al.tokens(10)).charged == (al.tokens(10),)
    clock.advance(501)
    with pytest.raises(al.ReservationExpired):
        guard.commit(late.id, al.tokens(10))
    b = balance(guard, ACME, al.Unit.TOKENS)
    assert (b.reserved, b.spent) == (0, 10)


def test_sweep_expires_across_tenants(guard: al.Guard, clock: al.ManualClock) -> None:
    for tenant in ("a", "b", "c"):
        guard.set_budget(f"tenant:{tenant}", tokens=10)
        guard.reserve(al.Subject(tenant=tenant), LLM, al.tokens(10))
    clock.advance(65_001)
    assert guard.sweep() == 3
    assert guard.sweep() == 0
    assert all(guard.balances(f"tenant:{t}")[0].reserved == 0 for t in "abc")


def test_sweep_respects_its_limit(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=100)
    for _ in range(5):
        guard.reserve(subject(), LLM, al.tokens(1))
    clock.advance(70_000)
    assert guard.sweep(limit=2) == 2
    assert guard.sweep(limit=10) == 3


def test_extend_adds_to_the_current_expiry_without_grace(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=100)
    r = guard.reserve(subject(), LLM, al.tokens(10), ttl_ms=10_000)
    first = r.expires_at_ms
    clock.advance(9_000)
    assert r.extend(5_000).expires_at_ms == first + 5_000
    assert r.expires_at_ms == first + 5_000
    clock.advance(6_001)  # past the new expiry, within grace
    with pytest.raises(al.ReservationExpired):
        r.extend(5_000)
    assert r.commit(al.tokens(10)).charged == (al.tokens(10),)  # commit still has grace


def test_extensions_are_limited(clock: al.ManualClock, store: al.MemoryStore) -> None:
    guard = al.Guard(store, max_extensions=2)
    guard.set_budget(ACME, tokens=100)
    r = guard.reserve(subject(), LLM, al.tokens(10))
    r.extend(1_000)
    r.extend(1_000)
    with pytest.raises(al.MaxExtensionsExceeded):
        r.extend(1_000)
    assert guard.get(r.id).extensions == 2


# -- record -----------------------------------------------------------------------------


def test_record_charges_without_a_reservation(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ANALYZER, usd=1, per="run")
    result = guard.record(analyzer(), al.Action("tool.call", "web_search"), al.usd(0.4))
    assert result.charged == (al.usd(0.4),)
    assert [b.spent for b in result.balances] == [al.usd(0.4).amount] * 2
    capped = guard.record(analyzer(), LLM, al.usd(1))  # only $0.60 left on the run
    assert capped.charged == (al.usd(0.6),)
    assert balance(guard, f"{ANALYZER}/run:run-7a3f").is_over_limit
    with pytest.raises(al.BudgetExceeded):
        guard.record(analyzer(), LLM, al.usd(1), overage_policy="REJECT")


def test_record_is_blocked_by_a_frozen_budget(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.freeze(ACME)
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.record(subject(), LLM, al.usd(1))
    assert denied.value.decision.reason == al.Reason.BUDGET_FROZEN


# -- idempotency ------------------------------------------------------------------------


def test_reserve_replay_returns_the_original_and_holds_once(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    first = guard.reserve(subject(), LLM, al.usd(1), idempotency_key="req-1")
    again = guard.reserve(subject(), LLM, al.usd(1), idempotency_key="req-1")
    assert again.id == first.id
    assert balance(guard, ACME).reserved == al.usd(1).amount
    with pytest.raises(al.IdempotencyMismatch):
        guard.reserve(subject(), LLM, al.usd(2), idempotency_key="req-1")


def test_commit_replay_never_charges_twice(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    r = guard.reserve(subject(), LLM, al.usd(1))
    first = guard.commit(r.id, al.usd(0.5), idempotency_key="c-1")
    again = guard.commit(r.id, al.usd(0.5), idempotency_key="c-1")
    assert again == first
    assert balance(guard, ACME).spent == al.usd(0.5).amount
    with pytest.raises(al.IdempotencyMismatch):
        guard.commit(r.id, al.usd(0.6), idempotency_key="c-1")
    with pytest.raises(al.ReservationFinalized):
        guard.commit(r.id, al.usd(0.5), idempotency_key="c-2")


def test_release_extend_record_fund_transfer_replays(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget("tenant:acme/workspace:a", usd=5)
    guard.set_budget("tenant:acme/workspace:b", usd=5)
    r = guard.reserve(subject(), LLM, al.usd(1))
    assert r.extend(1_000, idempotency_key="e") == r.extend(1_000, idempotency_key="e")
    assert guard.get(r.id).extensions == 1
    assert r.release(idempotency_key="x") == guard.release(r.id, idempotency_key="x")
    record = guard.record(subject(), LLM, al.usd(1), idempotency_key="rec")
    assert guard.record(subject(), LLM, al.usd(1), idempotency_key="rec") == record
    guard.fund(ACME, "CREDIT", al.usd(1), idempotency_key="f")
    guard.fund(ACME, "CREDIT", al.usd(1), idempotency_key="f")
    assert balance(guard, ACME).allocated == al.usd(11).amount
    for _ in range(2):
        guard.transfer("tenant:acme/workspace:a", "tenant:acme/workspace:b", al.usd(2),
                       idempotency_key="t")
    assert balance(guard, "tenant:acme/workspace:b").allocated == al.usd(7).amount
    assert balance(guard, ACME).spent == al.usd(1).amount
    with pytest.raises(al.IdempotencyMismatch):
        guard.record(subject(), LLM, al.usd(2), idempotency_key="rec")


# -- periods and definitions --------------------------------------------------------------


def test_period_rollover_opens_a_fresh_bucket(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=1000, period="day")
    guard.reserve(subject(), LLM, al.tokens(1000)).commit(al.tokens(1000))
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, al.tokens(1))
    assert denied.value.decision.retry_after_ms == 12 * 3600 * 1000
    clock.advance(denied.value.decision.retry_after_ms)
    (b,) = guard.balances(ACME)
    assert (b.bucket, b.allocated, b.spent) == ("2026-11-29", 1000, 0)
    guard.reserve(subject(), LLM, al.tokens(1000))


def test_a_reservation_settles_on_the_bucket_it_charged(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, tokens=1000, period="minute")
    r = guard.reserve(subject(), LLM, al.tokens(600), ttl_ms=120_000)
    clock.advance(60_000)
    (fresh,) = guard.balances(ACME)
    assert (fresh.bucket, fresh.reserved) == ("2026-11-28T12:01", 0)
    result = r.commit(al.tokens(500))
    assert [(b.bucket, b.spent, b.reserved) for b in result.balances] == [
        ("2026-11-28T12:00", 500, 0)]


def test_several_budgets_on_one_scope(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=2000, period="month")
    guard.set_budget(ACME, usd=100, period="day")
    guard.set_budget(ACME, tokens=1_000_000, period="day")
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, [al.usd(150), al.tokens(1)])
    assert denied.value.decision.limit == al.usd(100).amount
    ok = guard.reserve(subject(), LLM, [al.usd(99), al.tokens(1)])
    assert [(b.unit, b.period) for b in ok.balances] == [
        (al.Unit.USD_MICROCENTS, "day"), (al.Unit.USD_MICROCENTS, "month"),
        (al.Unit.TOKENS, "day")]


def test_changing_a_definition_adjusts_the_current_bucket_and_keeps_spend(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=50, period="month")
    guard.reserve(subject(), LLM, al.usd(45)).commit(al.usd(45))
    guard.reserve(subject(), LLM, al.usd(5))
    (upgraded,) = guard.set_budget(ACME, usd=500, period="month")  # Starter → Pro
    assert (upgraded.allocated, upgraded.spent, upgraded.reserved) == (
        al.usd(500).amount, al.usd(45).amount, al.usd(5).amount)
    assert upgraded.remaining == al.usd(450).amount
    guard.fund(ACME, "CREDIT", al.usd(10))
    (again,) = guard.set_budget(ACME, usd=400, period="month")
    assert again.allocated == al.usd(410).amount  # the credit survives a change of limit


def test_template_changes_reach_existing_dimension_ledgers(guard: al.Guard) -> None:
    guard.set_budget(ANALYZER, usd=25, per="run")
    guard.reserve(analyzer(), LLM, al.usd(20)).commit(al.usd(20))
    guard.set_budget(ANALYZER, usd=30, per="run")
    assert balance(guard, f"{ANALYZER}/run:run-7a3f").remaining == al.usd(10).amount


# -- administration ---------------------------------------------------------------------


def test_freeze_and_unfreeze(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, tokens=10)
    active = guard.reserve(subject(), LLM, al.usd(1))
    assert guard.freeze(ACME, "TOKENS") == 1
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(subject(), LLM, [al.usd(1), al.tokens(1)])
    assert denied.value.decision.reason == al.Reason.BUDGET_FROZEN
    guard.reserve(subject(), LLM, al.usd(1))  # dollars are not frozen
    active.commit(al.usd(1))  # a frozen budget still settles what it held
    guard.unfreeze(ACME)
    guard.reserve(subject(), LLM, al.tokens(1))
    assert guard.close_budget(ACME) == 2
    with pytest.raises(al.BudgetExceeded) as closed:
        guard.reserve(subject(), LLM, al.usd(1))
    assert closed.value.decision.reason == al.Reason.BUDGET_CLOSED
    with pytest.raises(al.NotFound):
        guard.freeze("tenant:acme/workspace:none")


@pytest.mark.parametrize(("operation", "amount", "expected"), [
    ("CREDIT", 5, (15, 3)), ("DEBIT", 4, (6, 3)), ("RESET", 20, (20, 3)),
    ("RESET_SPENT", 20, (20, 0)),
])
def test_fund_operations(guard: al.Guard, operation: str, amount: int,
                         expected: tuple[int, int]) -> None:
    guard.set_budget(ACME, tokens=10)
    guard.record(subject(), LLM, al.tokens(3))
    result = guard.fund(ACME, operation, al.tokens(amount))
    assert (result.before.allocated, result.before.spent) == (10, 3)
    assert (result.after.allocated, result.after.spent) == expected
    assert_identity(guard)


def test_fund_refuses_to_overdraw_or_overpay(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=10)
    guard.record(subject(), LLM, al.tokens(3))
    with pytest.raises(al.BudgetExceeded):
        guard.fund(ACME, "DEBIT", al.tokens(8))
    with pytest.raises(al.InvalidRequest, match="debt"):
        guard.fund(ACME, "REPAY_DEBT", al.tokens(1))
    assert balance(guard, ACME, al.Unit.TOKENS).allocated == 10
    with pytest.raises(al.NotFound):
        guard.fund("tenant:acme/workspace:x", "CREDIT", al.tokens(1))


def test_fund_a_single_dimension_ledger(guard: al.Guard) -> None:
    guard.set_budget(ANALYZER, usd=25, per="run")
    guard.fund(f"{ANALYZER}/run:run-7a3f", "CREDIT", al.usd(5))
    guard.reserve(analyzer(), LLM, al.usd(30))
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(analyzer("run-other"), LLM, al.usd(30))


def test_fund_needs_a_period_when_several_budgets_share_the_unit(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100, period="day")
    guard.set_budget(ACME, usd=2000, period="month")
    with pytest.raises(al.InvalidRequest, match="period="):
        guard.fund(ACME, "CREDIT", al.usd(1))
    result = guard.fund(ACME, "CREDIT", al.usd(1), period="day")
    assert result.after.allocated == al.usd(101).amount


def test_transfer_moves_allocation_between_departments(guard: al.Guard) -> None:
    marketing, engineering = "tenant:big/workspace:marketing", "tenant:big/workspace:engineering"
    guard.set_budget("tenant:big", usd=10_000, period="month")
    guard.set_budget(marketing, usd=2_000, period="month")
    guard.set_budget(engineering, usd=5_000, period="month")
    mk = al.Subject(tenant="big", workspace="marketing")
    guard.reserve(mk, LLM, al.usd(1_500)).commit(al.usd(1_500))
    with pytest.raises(al.BudgetExceeded):
        guard.transfer(marketing, engineering, al.usd(600))  # only $500 left to give
    result = guard.transfer(marketing, engineering, al.usd(500))
    assert (result.source.remaining, result.destination.allocated) == (
        0, al.usd(5_500).amount)
    result = guard.transfer(engineering, marketing, al.usd(1_000))
    assert result.destination.remaining == al.usd(1_000).amount
    guard.reserve(mk, LLM, al.usd(1_000))
    with pytest.raises(al.InvalidRequest, match="one tenant"):
        guard.transfer(marketing, "tenant:other/workspace:x", al.usd(1))
    with pytest.raises(al.InvalidRequest, match="same budget"):
        guard.transfer(marketing, marketing, al.usd(1))
    assert_identity(guard, "tenant:big")


def test_balances_at_a_scope_alone_or_with_everything_below(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_budget("tenant:acme/workspace:w", usd=10)
    guard.set_budget("tenant:acme/workspace:w", usd=1, per="run")
    guard.reserve(al.Subject(tenant="acme", workspace="w", dimensions={"run": "r1"}), LLM,
                  al.usd(1))
    assert [b.scope for b in guard.balances(ACME)] == [
        ACME, "tenant:acme/workspace:w", "tenant:acme/workspace:w/run:r1"]
    assert [b.scope for b in guard.balances(ACME, include_children=False)] == [ACME]
    assert [b.scope for b in guard.balances("tenant:acme/workspace:w",
                                            include_children=False)] == [
        "tenant:acme/workspace:w"]
    assert [b.scope for b in guard.balances("tenant:acme/workspace:w/run:r1")] == [
        "tenant:acme/workspace:w/run:r1"]
    assert guard.balances("tenant:nobody") == ()


def test_idle_dimension_ledgers_are_dropped_by_the_sweep(guard: al.Guard,
                                                         clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=100)
    guard.set_budget(ACME, usd=1, per="run")
    guard.set_quota(ACME, runs=5, window="day")
    for run in ("r1", "r2"):
        guard.reserve(subject(run), LLM, al.usd("0.5")).commit(al.usd("0.5"))
    clock.advance(31 * 86_400_000)
    guard.reserve(subject("r3"), LLM, al.usd("0.5"))  # r3 is in use: its ledger stays
    for _ in range(3):
        guard.sweep()
    assert [b.scope for b in guard.balances(ACME)] == [ACME, "tenant:acme/run:r3"]
    assert guard.balances(ACME)[0].spent == al.usd(1).amount  # the spend itself is kept
    for run in ("r4", "r5", "r6", "r7"):  # runs of days gone by no longer count
        guard.reserve(subject(run), LLM, al.usd("0.1"))
