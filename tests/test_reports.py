"""Reports: each event on the scope it happened at, counters kept per day with a retention,
ratios rounded, and rows per dimension value (per user, per run) ranked by spend."""

from __future__ import annotations

from decimal import Decimal

import pytest

import allotment as al

from support import LLM
from support.stores import START_MS

ACME = "tenant:acme"
AGENT = "tenant:acme/agent:a"
DAY_MS = 86_400_000
USD = al.Unit.USD_MICROCENTS


def rows_of(guard: al.Guard, **kwargs: object) -> dict[str, al.ReportRow]:
    return {row.scope: row for row in guard.report("acme", **kwargs)}


def test_a_run_ledger_running_out_is_counted_on_that_run_not_on_the_tenant(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100, period="month")
    guard.set_budget(AGENT, usd=1, per="run")
    run = al.Subject(tenant="acme", agent="a", dimensions={"run": "r1"})
    guard.record(run, LLM, al.usd(2))  # capped at the run's $1: the run ledger is exhausted
    rows = rows_of(guard)
    assert set(rows) == {ACME, AGENT}
    assert (rows[ACME].exhaustions, rows[AGENT].exhaustions) == (0, 0)
    assert rows[ACME].records == rows[AGENT].records == 1  # the call itself counts above
    (run_row,) = guard.report("acme", by="run")
    assert (run_row.scope, run_row.exhaustions, run_row.records) == ("tenant:acme/run:r1", 1, 1)
    assert run_row.committed == {USD: al.usd(1).amount}


# A child larger than its parent on purpose:
@pytest.mark.filterwarnings("ignore::allotment.BudgetHierarchyWarning")
def test_a_denial_is_counted_on_the_scope_whose_limit_refused(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1, period="month")
    guard.set_budget("tenant:acme/workspace:w", usd=50, period="month")
    worker = al.Subject(tenant="acme", workspace="w", dimensions={"user": "u-1"})
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(worker, LLM, al.usd(5))  # the tenant's $1 refuses it
    rows = rows_of(guard)
    assert rows[ACME].denials == {"BUDGET_EXCEEDED": 1}
    assert set(rows) == {ACME}  # nothing counted on the workspace, whose limit had room
    assert [row.denials for row in guard.report("acme", by="user")] == []


def test_would_be_denials_in_shadow_mode_are_counted_where_they_would_have_happened(
        guard: al.Guard) -> None:
    guard.set_mode("acme", "shadow")
    guard.set_budget(ACME, usd=100, period="month")
    guard.set_budget(AGENT, usd=1, per="run")
    run = al.Subject(tenant="acme", agent="a", dimensions={"run": "r9"})
    guard.reserve(run, LLM, al.usd(3)).release()
    rows = rows_of(guard)
    assert (rows[ACME].denials, rows[AGENT].denials) == ({}, {})
    (run_row,) = guard.report("acme", by="run")
    assert run_row.denials == {"observed:BUDGET_EXCEEDED": 1}
    assert (run_row.reservations, run_row.releases) == (1, 1)


def test_committed_ratio_is_rounded_to_four_places_and_money_stays_exact(
        guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    who = al.Subject(tenant="acme")
    for _ in range(3):
        guard.reserve(who, LLM, al.usd(1)).commit(al.usd("0.666666"))
    (row,) = guard.report("acme")
    assert row.committed == {USD: 3 * al.usd("0.666666").amount}
    assert row.reserved == {USD: al.usd(3).amount}
    assert row.committed_ratio() == Decimal("0.6667")
    assert row.committed_ratio().as_tuple().exponent == -4
    assert row.committed_ratio(al.Unit.TOKENS) is None


def test_rows_per_user_ranked_by_spend_top_n(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=100, period="month")
    spend = {"u-small": "0.50", "u-big": "7", "u-mid": "2.25", "u-none": "0"}
    for user, usd in spend.items():
        who = al.Subject(tenant="acme", workspace="w", dimensions={"user": user, "run": user})
        guard.reserve(who, LLM, al.usd(8)).commit(al.usd(usd))
    guard.record(al.Subject(tenant="acme", dimensions={"user": "u-mid"}), LLM, al.usd(1))
    top = guard.report("acme", by="user", top=2)
    assert [row.scope for row in top] == ["tenant:acme/user:u-big", "tenant:acme/user:u-mid"]
    assert top[1].committed == {USD: al.usd("3.25").amount}
    assert (top[1].reservations, top[1].commits, top[1].records) == (1, 1, 1)
    everyone = guard.report("acme", by="user")
    assert [row.scope.rsplit(":", 1)[1] for row in everyone] == [
        "u-big", "u-mid", "u-small", "u-none"]
    assert [row.period for row in everyone] == ["2026-11"] * 4
    assert len(guard.report("acme", by="run")) == 4
    assert guard.report("acme", by="session") == ()
    # the scope rows are what they were: one per standard scope, not one per user
    assert set(rows_of(guard)) == {ACME, "tenant:acme/workspace:w"}
    (busiest,) = guard.report("acme", top=1)
    assert busiest.scope == ACME  # the tenant row holds every call: the most spend


def test_a_tenant_handle_reports_per_dimension_too(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, period="month")
    guard.record(al.Subject(tenant="acme", dimensions={"user": "u-1"}), LLM, al.usd(1))
    acme = guard.tenant("acme")
    assert acme.report(by="user") == guard.report("acme", by="user")
    assert guard.tenant("other").report(by="user") == ()


def test_counters_past_the_retention_are_gone_and_the_rest_stay(
        guard: al.Guard, clock: al.ManualClock) -> None:
    guard.set_budget(ACME, usd=1_000)
    who = al.Subject(tenant="acme", dimensions={"user": "u-1"})
    guard.record(who, LLM, al.usd(1))
    first_day = START_MS
    clock.advance(40 * DAY_MS)
    guard.record(who, LLM, al.usd(2))
    assert [row.records for row in guard.report("acme", period="day", at=first_day)] == [1]
    clock.advance(al.REPORT_RETENTION_DAYS * DAY_MS - 40 * DAY_MS)  # the first day is out
    guard.record(who, LLM, al.usd(4))
    assert guard.report("acme", period="day", at=first_day) == ()
    assert guard.report("acme", period="day", at=first_day, by="user") == ()
    (kept,) = guard.report("acme", period="day", at=first_day + 40 * DAY_MS)
    assert kept.committed == {USD: al.usd(2).amount}
    assert guard.report("acme", period="year", at=first_day) == ()  # 2026: only that day
    (year,) = guard.report("acme", period="year")
    assert year.records == 2  # 2027: the two later days


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"by": "Bad Key!"}, "by"),
    ({"by": "workspace"}, "scope level"),
    ({"by": 3}, "by"),
    ({"top": 0}, "top"),
    ({"top": "ten"}, "top"),
    ({"period": "minute"}, "period"),
])
def test_bad_report_arguments_are_refused_with_what_would_be_right(
        guard: al.Guard, kwargs: dict[str, object], said: str) -> None:
    with pytest.raises(al.InvalidRequest, match=said):
        guard.report("acme", **kwargs)


def test_report_retention_is_a_store_setting_and_is_checked() -> None:
    for bad in (0, -1, 1.5, "92"):
        with pytest.raises(al.InvalidRequest, match="report_retention_days"):
            al.MemoryStore(report_retention_days=bad)  # type: ignore[arg-type]
    assert al.REPORT_RETENTION_DAYS == 92
