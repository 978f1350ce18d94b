"""Audit log, notifications and reports: every change on record, once per crossing."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

import allotment as al

from support import LLM
from support.stores import START_MS

ACME = "tenant:acme"


def test_every_change_is_audited_in_order(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=10)
    acme = al.Subject(tenant="acme", workflow="chat")
    r = guard.reserve(acme, LLM, al.usd(1), idempotency_key="k-1")
    r.extend(1_000)
    r.commit(al.usd(0.5))
    guard.reserve(acme, LLM, al.usd(1)).release("cancelled")
    expiring = guard.reserve(acme, LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(acme, LLM, al.usd(100))
    guard.record(acme, al.Action("tool.call", "search"), al.usd(0.1))
    guard.fund(ACME, "CREDIT", al.usd(1))
    guard.freeze(ACME)
    clock.advance(2_000)
    guard.sweep()
    records = guard.audit("acme", limit=1_000)
    assert [rec.type for rec in records] == [
        "budget.set", "reservation.reserved", "reservation.extended", "reservation.committed",
        "reservation.reserved", "reservation.released", "reservation.reserved",
        "reservation.denied", "event.recorded", "budget.funded", "budget.status_changed",
        "reservation.expired"]
    assert [rec.seq for rec in records] == sorted(rec.seq for rec in records)
    committed = records[3]
    assert (committed.reservation_id, committed.estimate, committed.actual,
            committed.charged) == (r.id, (al.usd(1),), (al.usd(0.5),), (al.usd(0.5),))
    assert records[1].idempotency_key == "k-1" and records[1].subject == acme
    assert records[1].action == "llm.completion openai:gpt-4o"
    denied = records[7]
    assert (denied.reason, denied.scopes, denied.estimate) == (
        "BUDGET_EXCEEDED", (ACME,), (al.usd(100),))
    assert records[-1].reservation_id == expiring.id
    assert records[5].detail == {"reason": "cancelled"}


def test_audit_filters(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=10)
    for _ in range(3):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))
        clock.advance(1_000)
    newest = guard.audit("acme", types="reservation.reserved", limit=2)
    assert [rec.at_ms for rec in newest] == [START_MS + 1_000, START_MS + 2_000]
    assert len(guard.audit("acme", since=START_MS + 1_000)) == 2
    assert guard.audit("other") == ()


def test_audit_retention_is_bounded(clock: al.ManualClock) -> None:
    guard = al.Guard(al.MemoryStore(clock, audit_retention=5))
    guard.set_budget(ACME, usd=10)
    for _ in range(10):
        guard.record(al.Subject(tenant="acme"), LLM, al.usd(0.01))
    records = guard.audit("acme", limit=100)
    assert len(records) == 5 and records[-1].seq == 11


def test_thresholds_notify_once_per_crossing_per_period(guard: al.Guard,
                                                        clock: al.ManualClock) -> None:
    seen: list[al.Notification] = []
    guard.on("*", seen.append)
    guard.set_budget(ACME, usd=100, period="day", alerts=[0.5, 0.8])
    acme = al.Subject(tenant="acme")
    guard.record(acme, LLM, al.usd(40))
    assert seen == []
    guard.record(acme, LLM, al.usd(45))  # 85%: both thresholds at once
    assert [(n.type, n.threshold) for n in seen] == [
        ("budget.threshold_crossed", 0.5), ("budget.threshold_crossed", 0.8)]
    guard.record(acme, LLM, al.usd(1))
    assert len(seen) == 2
    guard.record(acme, LLM, al.usd(20))  # capped at what remains: exhausted and over-limit
    assert [n.type for n in seen[2:]] == ["budget.exhausted", "budget.over_limit_entered"]
    assert (seen[2].scope, seen[2].unit, seen[2].bucket, seen[2].remaining) == (
        ACME, al.Unit.USD_MICROCENTS, "2026-11-28", 0)
    clock.advance(12 * 3_600_000)  # a new day: a new bucket notifies afresh
    guard.record(acme, LLM, al.usd(60))
    assert [(n.type, n.bucket) for n in seen[4:]] == [
        ("budget.threshold_crossed", "2026-11-29")]


def test_denials_notify_and_a_failing_subscriber_never_breaks_enforcement(
        guard: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    denied: list[al.Notification] = []
    shipped: list[al.Notification] = []

    class Queue:
        def emit(self, notification: al.Notification) -> None:
            shipped.append(notification)

    @guard.on("reservation.denied")
    def broken(notification: al.Notification) -> None:
        raise RuntimeError("subscriber bug")

    guard.on("reservation.denied", denied.append)
    guard.add_sink(Queue())
    guard.set_budget(ACME, usd=1)
    with caplog.at_level(logging.ERROR, logger="allotment"), pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(2))
    assert [(n.reason, n.scope) for n in denied] == [("BUDGET_EXCEEDED", ACME)]
    assert [n.type for n in shipped] == ["reservation.denied"]
    assert "subscriber failed" in caplog.text
    guard.reserve(al.Subject(tenant="acme"), LLM, al.usd(1))


def test_report_counts_per_scope_and_period(guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    guard.set_budget("tenant:acme/workspace:support", usd=2, period="month")
    support = al.Subject(tenant="acme", workspace="support")
    sales = al.Subject(tenant="acme", workspace="sales")
    guard.reserve(support, LLM, al.usd(1)).commit(al.usd("0.25"))
    guard.reserve(support, LLM, al.usd(1)).release()
    guard.reserve(sales, LLM, al.usd(2)).commit(al.usd(2))
    guard.reserve(support, LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(support, LLM, al.usd(5))
    clock.advance(86_400_000)  # the next day, same month
    guard.record(support, LLM, al.usd("1.75"))  # the workspace is now exhausted
    rows = {row.scope: row for row in guard.report("acme")}
    assert set(rows) == {ACME, "tenant:acme/workspace:sales", "tenant:acme/workspace:support"}
    tenant, support_row = rows[ACME], rows["tenant:acme/workspace:support"]
    assert (tenant.reservations, tenant.commits, tenant.releases, tenant.expiries,
            tenant.records) == (4, 2, 1, 1, 1)
    assert support_row.denials == {"BUDGET_EXCEEDED": 1}
    assert support_row.exhaustions == 1
    assert support_row.reserved == {al.Unit.USD_MICROCENTS: al.usd(3).amount}
    assert support_row.committed == {al.Unit.USD_MICROCENTS: al.usd(2).amount}
    assert support_row.committed_ratio() == Decimal("0.6667")  # rounded to four places
    assert tenant.period == "2026-11"
    day = guard.report("acme", period="day")
    assert [row.records for row in day if row.scope == ACME] == [1]
    assert guard.report("acme", period="month", at=START_MS - 31 * 86_400_000) == ()


def test_large_amounts_stay_exact_in_the_audit_details(guard: al.Guard) -> None:
    guard.set_budget(ACME, amount=1_234_567_812_345_678, unit="TOKENS")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(al.Subject(tenant="acme"), LLM, al.tokens(2**53 - 1))
    (budget_set,) = guard.audit("acme", types=["budget.set"])
    (denied,) = guard.audit("acme", types=["reservation.denied"])
    assert budget_set.detail["limit"] == 1_234_567_812_345_678
    assert denied.detail == {"remaining": 1_234_567_812_345_678,
                             "limit": 1_234_567_812_345_678, "requested": 2**53 - 1,
                             "unit": "TOKENS", "period": None}
    assert denied.estimate == (al.tokens(2**53 - 1),)
