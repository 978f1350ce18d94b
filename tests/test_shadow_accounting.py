"""Shadow-mode accounting: every charge is booked, and what enforce mode would not have let
through shows as debt. A shadow charge is spent while spent plus debt stays within the
allocation and debt beyond it (spent never passes the allocation), and the ledger is over
its limit once that debt passes what enforce mode would have let it owe. Runs on every store
kind, sync and async."""

from __future__ import annotations

import pytest

import allotment as al

from support import LLM

ACME = "tenant:acme"
WORKSPACE = "tenant:acme/workspace:w"
SUBJECT = al.Subject(tenant="acme")


def _usd(value: str | int) -> int:
    return al.usd(value).amount


def _row(guard: al.Guard, scope: str = ACME) -> al.Balance:
    (row,) = [b for b in guard.balances(scope, include_children=False)
              if b.unit is al.Unit.USD_MICROCENTS]
    return row


def test_a_trial_reservation_committed_in_full_shows_the_overage_as_debt(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    trial = guard.reserve(SUBJECT, LLM, al.usd(5))
    assert trial.decision.observed is not None
    trial.commit(al.usd(5))
    row = _row(guard)
    assert (row.allocated, row.spent, row.debt) == (_usd(1), _usd(1), _usd(4))
    assert row.is_over_limit
    assert row.remaining == -_usd(4)


def test_spend_within_the_budget_in_shadow_mode_is_plain_spend(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    guard.reserve(SUBJECT, LLM, al.usd("0.6")).commit(al.usd("0.4"))
    guard.record(SUBJECT, LLM, al.usd("0.6"))
    row = _row(guard)
    assert (row.spent, row.debt, row.is_over_limit) == (_usd(1), 0, False)


def test_a_record_beyond_the_budget_is_debt_and_over_the_limit(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    charged = guard.record(SUBJECT, LLM, al.usd(3))
    assert charged.charged == (al.usd(3),)
    (after,) = charged.balances
    assert (after.spent, after.debt, after.is_over_limit) == (_usd(1), _usd(2), True)


def test_the_order_of_commits_does_not_change_what_is_spent_and_owed(guard: al.Guard) -> None:
    """The reservation that fitted and the one that did not settle in either order: spent
    stops at the allocation and the rest of the spend is debt."""
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    fits = guard.reserve(SUBJECT, LLM, al.usd("0.8"))
    beyond = guard.reserve(SUBJECT, LLM, al.usd("0.8"))
    assert fits.decision.observed is None and beyond.decision.observed is not None
    beyond.commit(al.usd("0.9"))
    assert (_row(guard).spent, _row(guard).debt) == (_usd("0.9"), 0)
    fits.commit(al.usd("0.8"))
    row = _row(guard)
    assert (row.spent, row.debt, row.reserved) == (_usd(1), _usd("0.7"), 0)
    assert row.is_over_limit


def test_debt_within_the_overdraft_is_what_enforce_mode_allows(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1, overage_policy="ALLOW_WITH_OVERDRAFT", overdraft_limit=2)
    guard.set_mode("acme", "shadow")
    guard.record(SUBJECT, LLM, al.usd("2.5"))
    row = _row(guard)
    assert (row.spent, row.debt, row.is_over_limit) == (_usd(1), _usd("1.5"), False)
    guard.record(SUBJECT, LLM, al.usd(1))
    row = _row(guard)
    assert (row.spent, row.debt, row.is_over_limit) == (_usd(1), _usd("2.5"), True)


def test_each_ledger_books_its_own_overage(guard: al.Guard) -> None:
    """The tenant has room, the workspace does not: the same charge is spend on one and
    partly debt on the other."""
    guard.set_budget(ACME, usd=10)
    guard.set_budget(WORKSPACE, usd=1)
    guard.set_mode("acme", "shadow")
    guard.reserve(al.Subject(tenant="acme", workspace="w"), LLM, al.usd(3)).commit(al.usd(3))
    tenant, workspace = _row(guard), _row(guard, WORKSPACE)
    assert (tenant.spent, tenant.debt, tenant.is_over_limit) == (_usd(3), 0, False)
    assert (workspace.spent, workspace.debt, workspace.is_over_limit) == (
        _usd(1), _usd(2), True)


def test_over_limit_in_shadow_mode_notifies_once_and_reports_one_exhaustion(
        guard: al.Guard) -> None:
    seen: list[al.Notification] = []
    guard.on("*", seen.append)
    guard.set_budget(ACME, usd=1, alerts=[1.0])
    guard.set_mode("acme", "shadow")
    guard.reserve(SUBJECT, LLM, al.usd(2)).commit(al.usd(2))
    guard.record(SUBJECT, LLM, al.usd(1))
    kinds = [n.type for n in seen if n.type.startswith("budget.")]
    assert kinds == ["budget.threshold_crossed", "budget.exhausted",
                     "budget.over_limit_entered", "budget.debt_incurred",  # the commit
                     "budget.debt_incurred"]  # the record: shadow spend past the budget owes
    (row,) = [r for r in guard.report("acme") if r.scope == ACME]
    assert row.exhaustions == 1
    assert row.committed[al.Unit.USD_MICROCENTS] == _usd(3)


def test_back_in_enforce_mode_the_debt_refuses_until_repaid(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    guard.record(SUBJECT, LLM, al.usd(3))
    guard.set_mode("acme", "enforce")
    guard.fund(ACME, "CREDIT", al.usd(5))  # room again, but the debt is still owed
    with pytest.raises(al.BudgetExceeded) as refused:
        guard.reserve(SUBJECT, LLM, al.usd("0.1"))
    assert refused.value.decision.scope == ACME
    guard.fund(ACME, "REPAY_DEBT", al.usd(2))
    row = _row(guard)
    assert (row.debt, row.is_over_limit) == (0, False)
    guard.reserve(SUBJECT, LLM, al.usd("0.1")).commit(al.usd("0.1"))


def test_past_its_budget_a_shadow_ledger_observes_the_budget_refusal(guard: al.Guard) -> None:
    """Enforce mode would have stopped at the budget, so the would-be denial is
    BUDGET_EXCEEDED, not the debt or over-limit state that shadow spend leaves behind."""
    guard.set_budget(ACME, usd=1)
    guard.set_mode("acme", "shadow")
    guard.record(SUBJECT, LLM, al.usd(3))
    assert _row(guard).is_over_limit
    observed = guard.reserve(SUBJECT, LLM, al.usd("0.1")).decision.observed
    assert observed is not None
    assert (observed.reason, observed.scope) == ("BUDGET_EXCEEDED", ACME)
