"""Values at the boundary: exact money, subjects and scope derivation, periods."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

import allotment as al
from allotment.periods import Period, bucket, bucket_end_ms
from allotment.scopes import parse_scope


def ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=timezone.utc).timestamp()) * 1000


@pytest.mark.parametrize(("dollars", "microcents"), [
    (0.05, 5_000_000), ("0.05", 5_000_000), (Decimal("2000"), 200_000_000_000), (25, 2_500_000_000),
    ("0.000000001", 1), ("0.00000001", 1), ("0.000000011", 2), (0.1 + 0.2, 30_000_001),
])
def test_usd_is_decimal_exact_and_rounds_up(dollars: object, microcents: int) -> None:
    assert al.usd(dollars) == al.Amount(al.Unit.USD_MICROCENTS, microcents)  # type: ignore[arg-type]


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, places=10))
def test_usd_never_undercounts(dollars: Decimal) -> None:
    amount = al.usd(dollars).amount
    assert Decimal(amount) >= dollars * 10**8 > Decimal(amount - 1)


def test_amount_helpers_and_text() -> None:
    assert al.tokens(5) == al.Amount("TOKENS", 5)  # type: ignore[arg-type]
    assert al.credits(2).unit is al.Unit.CREDITS
    assert str(al.usd(1234.5)) == "$1,234.50"
    assert str(al.usd("0.031")) == "$0.031"
    assert str(al.tokens(1_000_000)) == "1,000,000 tokens"
    assert al.microcents_to_usd(al.usd("0.12").amount) == Decimal("0.12")


def test_subject_lower_cases_names_and_derives_cumulative_scopes() -> None:
    subject = al.Subject(tenant="ACME", workspace="Production", agent="analyzer",
                         dimensions={"Run": "Run-7A3F"})
    assert subject.scopes() == ("tenant:acme", "tenant:acme/workspace:production",
                                "tenant:acme/workspace:production/agent:analyzer")
    assert subject.dimensions == {"run": "Run-7A3F"}  # a value is an id: kept exactly
    assert subject.scope_path == "tenant:acme/workspace:production/agent:analyzer"
    full = al.Subject(tenant="t", workspace="w", app="a", workflow="f", agent="g", toolset="s")
    assert len(full.scopes()) == 6 and full.scopes()[-1].endswith("/toolset:s")


def test_parse_scope_normalises_and_splits_a_dimension() -> None:
    path = parse_scope("tenant:ACME/Agent:Bot/RUN:R1")
    assert path == ("acme", "tenant:acme/agent:bot", ("run", "R1"))
    assert path.path == "tenant:acme/agent:bot/run:R1"


@pytest.mark.parametrize(("period", "at", "label", "ends"), [
    (Period.MINUTE, ms(2026, 11, 28, 23, 59, 30), "2026-11-28T23:59", ms(2026, 11, 29)),
    (Period.HOUR, ms(2026, 11, 28, 23, 5), "2026-11-28T23", ms(2026, 11, 29)),
    (Period.DAY, ms(2026, 12, 31, 23, 59), "2026-12-31", ms(2027, 1, 1)),
    (Period.WEEK, ms(2026, 11, 29, 12), "2026-W48", ms(2026, 11, 30)),  # a Sunday
    (Period.WEEK, ms(2027, 1, 1), "2026-W53", ms(2027, 1, 4)),  # ISO year differs
    (Period.MONTH, ms(2026, 12, 15), "2026-12", ms(2027, 1, 1)),
    (Period.MONTH, ms(2028, 2, 29, 23), "2028-02", ms(2028, 3, 1)),
    (Period.YEAR, ms(2026, 6, 1), "2026", ms(2027, 1, 1)),
])
def test_buckets_are_calendar_aligned_in_utc(period: Period, at: int, label: str,
                                             ends: int) -> None:
    assert bucket(period, at) == label
    assert bucket_end_ms(period, at) == ends
    assert bucket(period, ends - 1) == label and bucket(period, ends) != label


def test_no_period_means_one_bucket() -> None:
    assert bucket(None, ms(2026, 1, 1)) == bucket(None, ms(2030, 1, 1)) == ""


def test_decision_explains_itself() -> None:
    decision = al.Decision(al.Outcome.DENY, reason="BUDGET_EXCEEDED",
                           scope="tenant:acme/agent:analyzer/run:run-7a3f",
                           unit=al.Unit.USD_MICROCENTS, remaining=al.usd("0.12").amount,
                           limit=al.usd(25).amount, requested=al.usd(1).amount,
                           retry_after_ms=3_600_000)
    assert str(al.BudgetExceeded(decision)) == (
        "tenant:acme/agent:analyzer/run:run-7a3f: BUDGET_EXCEEDED (budget $25.00, "
        "remaining $0.12, requested $1.00); frees up at the next period (in 1 h)")
    assert not decision.allowed


def test_results_read_like_records_whether_balances_came_built_or_as_a_snapshot() -> None:
    row = al.Balance("tenant:acme", al.Unit.USD_MICROCENTS, None, "", 10, 0, 4, 0, 0, False,
                     al.BudgetStatus.ACTIVE)
    calls: list[int] = []

    def snapshot() -> tuple[al.Balance, ...]:
        calls.append(1)
        return (row,)

    charged = (al.usd("0.04"),)
    lazy = al.CommitResult("acme:" + "0" * 32, al.ReservationStatus.COMMITTED, charged, (),
                           snapshot)
    built = al.CommitResult("acme:" + "0" * 32, al.ReservationStatus.COMMITTED, charged, (),
                            (row,))
    assert calls == []  # nothing is built until read
    assert lazy == built and repr(lazy) == repr(built)
    assert "balances=(Balance(scope='tenant:acme'" in repr(lazy)
    assert lazy.balances == (row,) and lazy.balances[0].remaining == 6
    assert calls == [1]  # built once, then kept
    assert lazy != al.ReleaseResult("acme:" + "0" * 32, al.ReservationStatus.RELEASED, (),
                                    (row,))
    with pytest.raises(TypeError):
        hash(lazy)
