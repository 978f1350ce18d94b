"""What users rely on says what it means: misspelt type names are refused, and denial
messages tell a person what happened and what to change."""

from __future__ import annotations

import pytest

import allotment as al
from allotment.pricing import Pricer

from support import LLM

ACME = "tenant:acme"


def test_every_audit_and_notification_type_is_known() -> None:
    assert "reservation.denied" in al.events.AUDIT_TYPES
    assert "budget.threshold_crossed" in al.events.NOTIFICATION_TYPES
    assert "sweep.tenant_failed" in al.events.NOTIFICATION_TYPES


def test_unknown_audit_type_is_refused_with_near_matches(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    with pytest.raises(al.InvalidRequest, match=r"'reservation.denied'") as error:
        guard.audit("acme", types=["denied"])
    assert str(error.value).startswith("types[0]: unknown type 'denied'; did you mean")
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'budget.set'"):
        guard.audit("acme", types="budget.sett")
    with pytest.raises(al.InvalidRequest,
                       match=r"known: access.set, api_key.created, api_key.revoked"):
        guard.audit("acme", types=["zzz"])
    assert [r.type for r in guard.audit("acme", types=[al.AuditType.BUDGET_SET])] == [
        "budget.set"]


def test_unknown_notification_type_is_refused_with_near_matches(guard: al.Guard) -> None:
    with pytest.raises(al.InvalidRequest, match=r"did you mean 'budget.threshold_crossed' or"):
        guard.on("budget.treshold_crossed", print)
    with pytest.raises(al.InvalidRequest, match="event_type"):
        guard.on("budget.exausted")(print)
    seen: list[str] = []
    guard.on("*", lambda note: seen.append(note.type))
    guard.on(al.NotificationType.EXHAUSTED, lambda note: seen.append("exhausted"))
    guard.set_budget(ACME, usd=1)
    guard.record(al.Subject(tenant="acme"), al.Action("tool.call", "search"), al.usd(1))
    assert "budget.exhausted" in seen and "exhausted" in seen


def test_durations_read_as_a_person_says_them() -> None:
    from allotment.models import duration
    assert [duration(ms) for ms in (400, 40_000, 720_000, 11_520_000, 7_200_000,
                                    2_173_003_000)] == [
        "1 s", "40 s", "12 min", "3 h 12 min", "2 h", "25 days"]


def test_a_request_larger_than_the_budget_can_never_fit(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1, period="month")
    with pytest.raises(al.BudgetExceeded) as error:
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(5))
    assert error.value.decision.retry_after_ms is None
    assert "can never fit under the current limit: raise the limit" in str(error.value)
    assert "frees up" not in str(error.value)
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.8))
    with pytest.raises(al.BudgetExceeded) as error:
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(0.5))
    assert error.value.decision.retry_after_ms is not None
    assert "; frees up at the next period (in " in str(error.value)
    assert "never fit" not in str(error.value)


def test_a_missing_budget_says_how_to_set_one(guard: al.Guard) -> None:
    with pytest.raises(al.Denied, match=r"set_budget\(...\) or give the guard a default_plan"):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))


def test_an_unknown_price_says_how_to_price_it() -> None:
    with pytest.raises(al.Denied, match=r"Pricer\(fallback=...\) or an override"):
        Pricer().price_of("nobody", "no-such-model")


def test_over_limit_after_a_default_overage_commit_says_what_happened(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    acme = al.Subject(tenant="acme")
    guard.reserve(acme, LLM, al.usd(0.5)).commit(al.usd(3))
    with pytest.raises(al.BudgetExceeded, match="OVERDRAFT_LIMIT_EXCEEDED") as error:
        guard.reserve(acme, LLM, al.usd(0.1))
    assert ("a commit went over the budget (ALLOW_IF_AVAILABLE charged what remained"
            in str(error.value))
    assert "over its limit until funded or the period rolls over" in str(error.value)


def test_a_per_dimension_budget_has_no_ledger_until_a_run_shows_up(guard: al.Guard) -> None:
    assert guard.set_budget(ACME, usd=5, per="run") == ()
    assert [b.allocated for b in guard.set_budget(ACME, usd=10)] == [al.usd(10).amount]
    guard.reserve(al.Subject(tenant="acme", dimensions={"run": "r-1"}), LLM, al.usd(1))
    assert {b.scope for b in guard.balances(ACME)} == {ACME, f"{ACME}/run:r-1"}
