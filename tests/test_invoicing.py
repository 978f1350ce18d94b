"""Usage export for invoicing: rows per tenant, scope, model and unit that add up to the
ledgers, exact integers on the wire, the same rows every time, and a tenant handle that
exports its own tenant only."""

from __future__ import annotations

import io
import json
import random
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

import allotment as al
from allotment.usage import COLUMNS, read_usage

from support.stores import make_store

USD = al.Unit.USD_MICROCENTS
TOKENS = al.Unit.TOKENS
GPT = al.Action("llm.completion", "openai:gpt-4o")
MINI = al.Action("llm.completion", "openai:gpt-4o-mini")
CLAUDE = al.Action("llm.completion", "anthropic:claude-sonnet-4-6")
SEARCH = al.Action("tool.call", "web_search")
MODELS = (GPT, MINI, CLAUDE, SEARCH)
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=timezone.utc).timestamp()) * 1000  # type: ignore[misc]


def totals(rows: list[al.UsageRow]) -> dict[tuple[str, str, str, al.Unit], int]:
    return {(r.tenant, r.scope, r.model, r.unit): r.spend for r in rows}


def spend_under(rows: list[al.UsageRow], scope: str, unit: al.Unit) -> int:
    """What the rows at or under `scope` spent in `unit`."""
    return sum(r.spend for r in rows if r.unit is unit
               and (r.scope == scope or r.scope.startswith(scope + "/")))


def charged_on(guard: al.Guard, scope: str, unit: al.Unit, period: str = "month") -> int:
    """What the scope's own ledger in `unit` was charged this bucket: spent plus debt."""
    (ledger,) = [b for b in guard.balances(scope, include_children=False)
                 if b.unit is unit and b.period == period]
    return ledger.spent + ledger.debt


def test_a_month_of_traffic_adds_up_row_by_row_to_what_was_charged(
        guard: al.Guard, clock: al.ManualClock) -> None:
    clock.set(ms(2026, 12, 1))
    tenants = {"acme": ("production", "staging"), "globex": ("research",),
               "initech": ("default",)}
    for name, workspaces in tenants.items():
        guard.set_budget(f"tenant:{name}", usd=400, period="month")
        guard.set_budget(f"tenant:{name}", tokens=3_000_000, period="month")
        for workspace in workspaces:
            guard.set_budget(f"tenant:{name}/workspace:{workspace}", usd=150, period="month")
        guard.set_budget(f"tenant:{name}/workspace:{workspaces[0]}/agent:bot", usd=2,
                         per="run")
    guard.set_mode("initech", "shadow")  # over-spend booked as debt: still charged
    guard.set_budget("tenant:globex", usd=5, period="day")  # daily cap: some denials
    expected: dict[tuple[str, str, str, al.Unit], int] = defaultdict(int)
    calls: dict[tuple[str, str, str], int] = defaultdict(int)
    denials: dict[tuple[str, str, str], int] = defaultdict(int)
    tokens_in: dict[tuple[str, str, str], int] = defaultdict(int)
    rng = random.Random(19)
    for day in range(31):
        clock.set(ms(2026, 12, 1) + day * DAY_MS + 9 * HOUR_MS)
        for n in range(10):
            name = rng.choice(sorted(tenants))
            workspace = rng.choice(tenants[name])
            run = {"run": f"r{day}-{n}"} if rng.random() < 0.5 else {}
            subject = al.Subject(tenant=name, workspace=workspace,
                                 agent="bot" if run else None, dimensions=run)
            action = rng.choice(MODELS)
            key = (name, subject.scope_path, action.name)
            held = [al.usd(Decimal(rng.randint(1, 300)) / 100), al.tokens(rng.randint(1, 9000))]
            try:
                r = guard.reserve(subject, action, held)
            except al.Denied:
                denials[key] += 1
                continue
            fate = rng.random()
            if fate < 0.1:
                r.release()
                continue
            if fate < 0.15:
                clock.advance(70_000)  # past ttl and grace: it expires, charging nothing
                continue
            usage = al.TokenUsage(input_tokens=rng.randint(0, 5000),
                                  output_tokens=rng.randint(0, 4000))
            actual = [al.usd(Decimal(rng.randint(0, 350)) / 100),
                      al.tokens(usage.input_tokens + usage.output_tokens)]
            try:
                result = r.commit(actual, usage=usage)
            except al.BudgetExceeded:
                result = r.commit(held)
                usage = al.TokenUsage()
            for amount in result.charged:
                expected[(*key, amount.unit)] += amount.amount
            calls[key] += 1
            tokens_in[key] += usage.input_tokens
        record_to = al.Subject(tenant="acme", workspace="production")
        result = guard.record(record_to, SEARCH, al.usd("0.01"),
                              usage=al.TokenUsage(input_tokens=7))
        expected[("acme", record_to.scope_path, SEARCH.name, USD)] += result.charged[0].amount
        calls[("acme", record_to.scope_path, SEARCH.name)] += 1
        tokens_in[("acme", record_to.scope_path, SEARCH.name)] += 7

    rows = list(guard.usage("2026-12"))
    assert rows and {row.period for row in rows} == {"2026-12"}
    # row by row: what each scope and model was charged, in each unit
    assert {k: v for k, v in totals(rows).items() if v} == {k: v for k, v in expected.items()
                                                           if v}
    for row in rows:
        key = (row.tenant, row.scope, row.model)
        assert (row.calls, row.denials, row.input_tokens) == (
            calls[key], denials[key], tokens_in[key]), row
    assert sum(denials.values()) > 0 and sum(row.denials for row in rows if row.unit is USD) \
        == sum(denials.values())
    # and the rows add up to every ledger of the month: tenants, workspaces, both units
    for name, workspaces in tenants.items():
        for unit in (USD, TOKENS):
            assert spend_under(rows, f"tenant:{name}", unit) == charged_on(
                guard, f"tenant:{name}", unit)
        for workspace in workspaces:
            scope = f"tenant:{name}/workspace:{workspace}"
            assert spend_under(rows, scope, USD) == charged_on(guard, scope, USD)
    assert charged_on(guard, "tenant:initech", USD) > 0
    # the same rows whoever asks: one tenant, or its own handle
    assert list(guard.usage("2026-12", tenant="acme")) == [r for r in rows if r.tenant == "acme"]
    assert list(guard.tenant("globex").usage("2026-12")) == [
        r for r in rows if r.tenant == "globex"]


def test_a_call_reserved_before_midnight_counts_in_the_month_whose_ledger_it_charged(
        guard: al.Guard, clock: al.ManualClock) -> None:
    clock.set(ms(2026, 11, 30, 23, 59, 59))
    guard.set_budget("tenant:acme", usd=100, period="month")
    subject = al.Subject(tenant="acme")
    guard.record(subject, GPT, al.usd(1))
    r = guard.reserve(subject, GPT, al.usd(5))
    november = charged_on(guard, "tenant:acme", USD)
    clock.advance(2_000)  # December
    r.commit(al.usd(3))
    guard.record(subject, GPT, al.usd(2))
    assert charged_on(guard, "tenant:acme", USD) == al.usd(2).amount  # December's ledger
    (nov,) = guard.usage("2026-11")
    (dec,) = guard.usage("2026-12")
    assert nov.spend == november + al.usd(3).amount == al.usd(4).amount
    assert (nov.calls, dec.calls, dec.spend) == (2, 1, al.usd(2).amount)
    assert [row.spend for row in guard.usage("2026-11-30")] == [al.usd(4).amount]
    (first_day,) = guard.usage("2026-12-01")
    assert (first_day.period, first_day.spend, first_day.calls) == ("2026-12-01", dec.spend, 1)


def test_the_same_export_twice_is_byte_for_byte_the_same(guard: al.Guard) -> None:
    guard.set_budget("tenant:beta", usd=50)
    guard.set_budget("tenant:alpha", usd=50)
    for tenant in ("beta", "alpha"):
        for action in (MINI, GPT, CLAUDE):
            for workspace in ("w2", "w1"):
                guard.record(al.Subject(tenant=tenant, workspace=workspace), action,
                             al.usd("0.25"), usage=al.TokenUsage(input_tokens=3))
    first, second = io.StringIO(), io.StringIO()
    assert al.write_usage(guard.usage(), first) == 12
    al.write_usage(guard.usage(), second)
    assert first.getvalue() == second.getvalue()
    rows = list(guard.usage())
    assert [(r.tenant, r.scope, r.model) for r in rows] == sorted(
        (r.tenant, r.scope, r.model) for r in rows)  # by tenant, scope, model
    assert list(guard.usage()) == rows


def test_csv_and_json_lines_round_trip_with_exact_integers(guard: al.Guard) -> None:
    biggest = 2**53 - 1
    guard.set_budget("tenant:acme", amount=biggest, unit="USD_MICROCENTS")
    subject = al.Subject(tenant="acme", workspace="w")
    odd = al.Action("llm.completion", 'vendor:model "x", v|2')  # quotes, commas, bars
    guard.record(subject, odd, al.Amount(USD, biggest - 1),
                 usage=al.TokenUsage(input_tokens=10**15, cache_read_tokens=10**14,
                                     cache_write_tokens=3, output_tokens=12,
                                     reasoning_tokens=5))
    guard.record(subject, odd, al.Amount(USD, 1))
    rows = list(guard.usage())
    (row,) = rows
    assert row.spend == biggest and row.model == odd.name
    assert row.amount == Decimal("90071992.54740991")
    for kind in ("csv", "json"):
        out = io.StringIO()
        al.write_usage(rows, out, format=kind)
        text = out.getvalue()
        assert list(read_usage(io.StringIO(text), format=kind)) == rows
        assert str(biggest) in text and "90071992.54740991" in text
    out = io.StringIO()
    al.write_usage(rows, out, format="json")
    (line,) = out.getvalue().splitlines()
    wire = json.loads(line)
    assert list(wire) == list(COLUMNS)
    assert wire["spend"] == biggest and isinstance(wire["spend"], int)
    assert wire["amount"] == "90071992.54740991" and wire["input_tokens"] == 10**15
    assert (wire["cached_tokens"], wire["cache_write_tokens"], wire["output_tokens"],
            wire["reasoning_tokens"], wire["calls"]) == (10**14, 3, 12, 5, 2)
    out = io.StringIO()
    al.write_usage(rows, out)
    header = out.getvalue().splitlines()[0]
    assert header == ",".join(COLUMNS)


def test_a_tenant_handle_exports_its_own_tenant_only(guard: al.Guard) -> None:
    for tenant in ("acme", "globex"):
        guard.set_budget(f"tenant:{tenant}", usd=10)
        guard.record(al.Subject(tenant=tenant), GPT, al.usd(1))
    own = list(guard.tenant("acme").usage())
    assert [(r.tenant, r.spend) for r in own] == [("acme", al.usd(1).amount)]
    assert {r.tenant for r in guard.usage()} == {"acme", "globex"}
    with pytest.raises(TypeError):
        guard.tenant("acme").usage(tenant="globex")  # type: ignore[call-arg]


def test_denials_count_at_the_calling_scope_with_no_spend(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=1)
    worker = al.Subject(tenant="acme", workspace="w")
    with pytest.raises(al.BudgetExceeded):
        guard.reserve(worker, CLAUDE, [al.usd(5), al.tokens(10)])
    rows = list(guard.usage())
    assert [(r.scope, r.model, r.unit, r.spend, r.calls, r.denials) for r in rows] == [
        ("tenant:acme/workspace:w", CLAUDE.name, USD, 0, 0, 1),
        ("tenant:acme/workspace:w", CLAUDE.name, TOKENS, 0, 0, 1)]
    assert guard.decide(worker, CLAUDE, al.usd(5)).outcome is al.Outcome.DENY
    assert list(guard.usage()) == rows  # a decision changes nothing


def test_a_replayed_commit_or_record_is_counted_once(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    subject = al.Subject(tenant="acme")
    usage = al.TokenUsage(input_tokens=100, output_tokens=20)
    r = guard.reserve(subject, GPT, al.usd(1))
    for _ in range(2):
        guard.commit(r.id, al.usd("0.5"), idempotency_key="c-1", usage=usage)
        guard.record(subject, MINI, al.usd("0.1"), idempotency_key="e-1", usage=usage)
    rows = list(guard.usage())
    assert [(r.model, r.calls, r.spend, r.input_tokens) for r in rows] == [
        (GPT.name, 1, al.usd("0.5").amount, 100), (MINI.name, 1, al.usd("0.1").amount, 100)]
    with pytest.raises(al.IdempotencyMismatch):  # other token counts: another request
        guard.commit(r.id, al.usd("0.5"), idempotency_key="c-1",
                     usage=al.TokenUsage(input_tokens=1))


def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme", usd=10)
    r = guard.reserve(al.Subject(tenant="acme"), GPT, al.usd(1))
    with pytest.raises(al.InvalidRequest, match=r"usage: expected an al\.TokenUsage"):
        r.commit(al.usd("0.5"), usage={"input_tokens": 5})  # type: ignore[arg-type]
    with pytest.raises(al.InvalidRequest, match="usage"):
        guard.record(al.Subject(tenant="acme"), GPT, al.usd(1), usage=5)  # type: ignore[arg-type]
    assert list(guard.usage()) == []
    assert guard.get(r.id).status is al.ReservationStatus.ACTIVE
    for period in ("2026-13", "2026-1", "november", "2026-11-31", 202611, "2026-11-28T00"):
        with pytest.raises(al.InvalidRequest, match=r"period: .* write it as '2026-11'"):
            guard.usage(period)  # refused when called, before any row is read
    with pytest.raises(al.InvalidRequest, match="format: 'xml' is not 'csv' or 'json'"):
        al.write_usage([], io.StringIO(), format="xml")
    with pytest.raises(al.InvalidRequest, match="expected UsageRow"):
        al.write_usage([{"spend": 1}], io.StringIO())  # type: ignore[list-item]
    with pytest.raises(al.InvalidRequest):
        guard.usage(tenant="Not A Tenant!")


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_usage_counters_are_kept_as_long_as_the_report_counters(
        kind: str, clock: al.ManualClock) -> None:
    clock.set(ms(2026, 11, 1, 12))
    guard = al.Guard(make_store(kind, clock, report_retention_days=3))
    guard.set_budget("tenant:acme", usd=100, period="day")
    try:
        for day in range(5):
            clock.set(ms(2026, 11, 1 + day, 12))
            guard.record(al.Subject(tenant="acme"), GPT, al.usd(1))
        assert [r.calls for r in guard.usage("2026-11")] == [3]  # the 3rd, 4th and 5th
        assert list(guard.usage("2026-11-02")) == []  # past the retention
        assert [r.spend for r in guard.usage("2026-11-05")] == [al.usd(1).amount]
    finally:
        guard.close()


def test_rows_stream_one_tenant_at_a_time(store: Any) -> None:
    guard = al.Guard(store)
    for n in range(3):
        guard.set_budget(f"tenant:t{n}", usd=10)
        guard.record(al.Subject(tenant=f"t{n}"), GPT, al.usd(1))
    rows = guard.usage()
    first = next(rows)
    assert first.tenant == "t0"
    guard.record(al.Subject(tenant="t2"), GPT, al.usd(1))  # read when its turn comes
    assert [(r.tenant, r.calls) for r in rows] == [("t1", 1), ("t2", 2)]


def test_the_async_twin_is_an_async_iterator() -> None:
    import asyncio

    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=10)
    guard.record(al.Subject(tenant="acme"), GPT, al.usd(1))

    async def collect() -> list[Any]:
        return [row async for row in guard.ausage(tenant="acme")]

    assert asyncio.run(collect()) == list(guard.usage(tenant="acme"))
    with pytest.raises(al.InvalidRequest):
        guard.ausage("bad")
