"""Alerts follow committed spend plus debt, never holds: a reservation (or a decide, or a
shadow-mode trial) fires nothing; the commit or record that takes spend across a threshold
fires it, once per period. Runs on every store kind."""

from __future__ import annotations

import allotment as al

from support import LLM

ACME = "tenant:acme"
SUBJECT = al.Subject(tenant="acme")


def _watch(guard: al.Guard) -> list[al.Notification]:
    seen: list[al.Notification] = []
    guard.on("*", seen.append)
    return seen


def _budget_notes(seen: list[al.Notification]) -> list[tuple[str, float | None]]:
    return [(n.type, n.threshold) for n in seen if n.type.startswith("budget.")]


def test_a_hold_released_fires_nothing_and_the_real_crossings_later_fire(
        guard: al.Guard) -> None:
    seen = _watch(guard)
    guard.set_budget(ACME, usd=100, period="month")
    guard.decide(SUBJECT, LLM, al.usd(100))
    guard.reserve(SUBJECT, LLM, al.usd(90)).release()
    assert _budget_notes(seen) == []
    guard.record(SUBJECT, LLM, al.usd(50))
    assert _budget_notes(seen) == [("budget.threshold_crossed", 0.5)]
    guard.reserve(SUBJECT, LLM, al.usd(10)).commit(al.usd(30))
    assert _budget_notes(seen)[1:] == [("budget.threshold_crossed", 0.8)]


def test_a_large_trial_reservation_in_shadow_mode_fires_nothing(guard: al.Guard) -> None:
    seen = _watch(guard)
    guard.set_mode("acme", "shadow")
    guard.set_budget(ACME, usd=100, period="month")
    trial = guard.reserve(SUBJECT, LLM, al.usd(500))
    assert _budget_notes(seen) == []
    trial.release()
    (row,) = [row for row in guard.report("acme") if row.scope == ACME]
    assert row.reservations == 1 and row.exhaustions == 0


def test_a_commit_crossing_50_and_80_percent_fires_each_once(guard: al.Guard) -> None:
    seen = _watch(guard)
    guard.set_budget(ACME, usd=100, period="month")
    held = guard.reserve(SUBJECT, LLM, al.usd(90))
    assert _budget_notes(seen) == []
    held.commit(al.usd(85))
    assert _budget_notes(seen) == [
        ("budget.threshold_crossed", 0.5), ("budget.threshold_crossed", 0.8)]
    guard.reserve(SUBJECT, LLM, al.usd(5)).commit(al.usd(1))
    assert len(_budget_notes(seen)) == 2


def test_a_record_reaching_100_percent_exhausts_once_per_period(
        guard: al.Guard, clock: al.ManualClock) -> None:
    seen = _watch(guard)
    guard.set_budget(ACME, usd=10, period="day", alerts=[1.0])
    held = guard.reserve(SUBJECT, LLM, al.usd(6))
    guard.record(SUBJECT, LLM, al.usd(4))  # held plus spent is the whole budget: no alert
    assert _budget_notes(seen) == []
    held.release()
    guard.record(SUBJECT, LLM, al.usd(6))
    assert _budget_notes(seen) == [("budget.threshold_crossed", 1.0), ("budget.exhausted", None)]
    guard.record(SUBJECT, LLM, al.usd(1))  # capped at nothing left: already exhausted
    assert [n for n in seen if n.type == "budget.exhausted"] == seen[1:2]
    clock.advance(86_400_000)  # the next day's bucket notifies afresh
    guard.record(SUBJECT, LLM, al.usd(10))
    exhausted = [n for n in seen if n.type == "budget.exhausted"]
    assert len(exhausted) == 2 and exhausted[0].bucket != exhausted[1].bucket
    day = [row for row in guard.report("acme", period="day") if row.scope == ACME]
    assert [row.exhaustions for row in day] == [1]


def test_over_limit_is_entered_again_once_funding_cleared_it(guard: al.Guard) -> None:
    seen = _watch(guard)
    guard.set_budget(ACME, usd=10, period="month")
    guard.record(SUBJECT, LLM, al.usd(20))  # capped at what remains: over the limit
    guard.fund(ACME, "CREDIT", al.usd(5))  # clears the flag
    guard.reserve(SUBJECT, LLM, al.usd(1)).commit(al.usd(10))  # capped again
    assert [n.type for n in seen].count("budget.over_limit_entered") == 2
