"""The adapters' entry points (`allotment.adapter`: `reserve_units`, `commit_units`) take checked
integer units instead of Amounts and skip re-validating them: they must leave the same
ledgers, results and audit trail as the public `reserve` and `commit`."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

import allotment as al
from allotment import adapter
from allotment.adapter import ElasticTerms
from allotment.integrations._metering import Metering, Request
from allotment.pricing import ModelPrice, Pricer, TokenUsage
from allotment.stores.operations import Op

from support.stores import START_MS, make_store

USD, TOKENS = al.Unit.USD_MICROCENTS, al.Unit.TOKENS
LLM = al.Action("llm.completion", "openai:gpt-4o")
RATES = ((USD, 1_000_000_000), (TOKENS, 1_000_000))  # $10 and one token per output token


def subject(**fields: str) -> al.Subject:
    return al.Subject(tenant="acme", workflow="triage", **fields)


def twin_guards(kind: str, usd: str = "10") -> tuple[al.Guard, al.Guard]:
    """Two guards on fresh stores of `kind` with the same budgets."""
    guards = []
    for _ in range(2):
        guard = al.Guard(make_store(kind, al.ManualClock(START_MS)))
        guard.set_budget("tenant:acme", usd=usd)
        guard.set_budget("tenant:acme/workflow:triage", tokens=100_000, period="day")
        guards.append(guard)
    return guards[0], guards[1]


def elastic(fixed: tuple[al.Amount, ...], max_tokens: int, floor: int) -> al.Elastic:
    return al.Elastic(fixed=fixed, per_mtok=(al.Amount(USD, RATES[0][1]), al.tokens(10**6)),
                      max_tokens=max_tokens, floor=floor)


def ledgers(guard: al.Guard) -> list[tuple[Any, ...]]:
    return [(b.scope, b.unit, b.allocated, b.reserved, b.spent, b.debt)
            for b in guard.balances("tenant:acme")]


def amounts(result: al.CommitResult) -> tuple[Any, ...]:
    return result.status, result.charged, result.released


def trail(guard: al.Guard) -> list[al.AuditRecord]:
    """The tenant's audit records, each whole but for its (random) reservation id."""
    return [replace(record, reservation_id=None) for record in guard.audit("acme")]


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("usd, outcome", [("10", "ALLOW"), ("0.0101", "ALLOW_WITH_CAPS"),
                                          ("0.000001", "DENY")])
def test_units_entry_reserves_and_commits_like_the_public_one(kind: str, usd: str,
                                                              outcome: str) -> None:
    """Roomy, shrunk to what fits, and denied: alike either way."""
    public, units = twin_guards(kind, usd)
    fixed = (al.Amount(USD, 3_000), al.tokens(30))
    max_tokens = 2_000
    if outcome == "DENY":
        with pytest.raises(al.BudgetExceeded) as denied:
            public.reserve(subject(), LLM, elastic(fixed, max_tokens, 10))
        with pytest.raises(al.BudgetExceeded) as again:
            adapter.reserve_units(units, subject(), LLM, ((USD, 3_000), (TOKENS, 30)),
                                  ElasticTerms(RATES, max_tokens, 10))
        assert again.value.decision == denied.value.decision
        assert ledgers(units) == ledgers(public)
        assert trail(units) == trail(public)
        return
    held = public.reserve(subject(), LLM, elastic(fixed, max_tokens, 10))
    assert held.decision.outcome.value == outcome
    twin = adapter.reserve_units(units, subject(), LLM, ((USD, 3_000), (TOKENS, 30)),
                                 ElasticTerms(RATES, max_tokens, 10))
    assert twin.decision == held.decision
    assert twin.estimate == held.estimate
    assert twin.info.scopes == held.info.scopes
    assert twin.expires_at_ms == held.expires_at_ms
    assert ledgers(units) == ledgers(public)

    committed = held.commit([al.Amount(USD, 5_000), al.tokens(42)])
    again = adapter.commit_units(twin, ((USD, 5_000), (TOKENS, 42)))
    assert amounts(again) == amounts(committed)
    assert twin.settled and twin.status is al.ReservationStatus.COMMITTED
    assert ledgers(units) == ledgers(public)
    assert trail(units) == trail(public)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_units_commit_above_the_estimate_and_leaving_a_unit_out(kind: str) -> None:
    public, units = twin_guards(kind)
    held = public.reserve(subject(), LLM, [al.Amount(USD, 1_000), al.tokens(10)])
    twin = adapter.reserve_units(units, subject(), LLM, ((USD, 1_000), (TOKENS, 10)))
    assert amounts(adapter.commit_units(twin, ((USD, 1_500),))) == amounts(
        held.commit(al.Amount(USD, 1_500)))
    assert twin.result is not None and twin.result.charged == (al.Amount(USD, 1_500),
                                                              al.tokens(10))
    assert ledgers(units) == ledgers(public)
    assert trail(units) == trail(public)


def test_units_entry_still_checks_what_an_adapter_cannot_vouch_for() -> None:
    guard, _ = twin_guards("memory")
    with pytest.raises(al.InvalidRequest, match="per_mtok"):
        adapter.reserve_units(guard, subject(), LLM, ((USD, 1), (TOKENS, 1)),
                              ElasticTerms(RATES, 10**12, 1))
    with pytest.raises(al.InvalidRequest, match="ttl_ms"):
        adapter.reserve_units(guard, subject(), LLM, ((USD, 1), (TOKENS, 1)), ttl_ms=5)
    assert ledgers(guard)[0][3] == 0  # nothing held by either refusal


def test_units_commit_of_an_unguarded_call_records_its_spend() -> None:
    """Let through while the store was down: the commit records the spend instead."""

    class Flaky(al.MemoryStore):
        down = False

        def execute(self, op: Op[Any]) -> Any:
            if self.down:
                raise al.StoreUnavailable("down for the test")
            return super().execute(op)

    store = Flaky()
    guard = al.Guard(store, on_store_error="allow")
    guard.set_budget("tenant:acme", usd=10)
    store.down = True
    held = adapter.reserve_units(guard, subject(), LLM, ((USD, 1_000), (TOKENS, 10)))
    assert held.unguarded
    store.down = False
    result = adapter.commit_units(held, ((USD, 700), (TOKENS, 7)))
    assert result.charged == (al.Amount(USD, 700), al.tokens(7))
    (balance,) = guard.balances("tenant:acme")
    assert (balance.spent, balance.reserved) == (700, 0)


def test_async_units_entry_matches_the_sync_one() -> None:
    sync, asynchronous = twin_guards("memory")
    held = adapter.reserve_units(sync, subject(), LLM, ((USD, 2_000), (TOKENS, 20)),
                                 ElasticTerms(RATES, 100, 1))
    sync_result = adapter.commit_units(held, ((USD, 2_500), (TOKENS, 25)))

    async def main() -> al.CommitResult:
        twin = await adapter.areserve_units(asynchronous, subject(), LLM,
                                            ((USD, 2_000), (TOKENS, 20)),
                                            ElasticTerms(RATES, 100, 1))
        assert twin.estimate == held.estimate
        return await adapter.acommit_units(twin, ((USD, 2_500), (TOKENS, 25)))

    assert amounts(asyncio.run(main())) == amounts(sync_result)
    assert ledgers(asynchronous) == ledgers(sync)


def test_metering_estimate_is_the_public_elastic_estimate_in_units() -> None:
    price = ModelPrice(input_mtok="2.5", output_mtok="10")
    metering = Metering(al.Guard(), pricer=Pricer({"openai:gpt-4o": price}), floor=64)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "How much is left?"}]}
    request = Request(subject(), "llm.completion", "openai", "gpt-4o", body, 500)
    estimate = metering.estimate(request)
    public = al.Elastic(fixed=tuple(al.Amount(u, a) for u, a in estimate.units),
                        per_mtok=(price.output_rate, al.tokens(10**6)), max_tokens=500,
                        floor=64)
    assert estimate.elastic == ElasticTerms(((USD, price.output_rate.amount), (TOKENS, 10**6)),
                                            500, 64)
    assert estimate.units[0][1] == price.input_microcents(estimate.units[1][1]) > 0
    assert public.units() == dict(estimate.units)
    embedding = metering.estimate(Request(subject(), "llm.embedding", "openai", "gpt-4o",
                                          {"input": "text"}, None))
    assert embedding.elastic is None and [u for u, _ in embedding.units] == [USD, TOKENS]


def test_meter_units_are_its_actual_amounts() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=10)
    metering = Metering(guard, pricer=Pricer({"gpt-4o": {"input_mtok": 2.5,
                                                         "output_mtok": 10}}))
    meter = metering.start(Request(subject(), "llm.completion", "openai", "gpt-4o",
                                   {"messages": [{"role": "user", "content": "hi"}]}, 100))
    usage = TokenUsage(input_tokens=12, output_tokens=30, cache_read_tokens=4)
    assert [al.Amount(u, a) for u, a in meter.units(usage)] == meter.actual(usage)
    meter.settle(usage)
    assert meter.result is not None and meter.result.charged == tuple(meter.actual(usage))


@pytest.mark.parametrize("option, value", [("floor", -5), ("floor", 1.5),
                                           ("default_max_tokens", 0),
                                           ("default_max_tokens", "512")])
def test_wrapper_options_the_entry_points_trust_are_checked_up_front(option: str,
                                                                     value: Any) -> None:
    """floor and default_max_tokens reach the guard unchecked on every call, so a bad one is
    refused when the client is wrapped (a negative floor would hold a negative output)."""
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd="0.0000001")
    with pytest.raises(al.InvalidRequest, match=option):
        Metering(guard, **{option: value})
    (balance,) = guard.balances("tenant:acme")
    assert (balance.reserved, balance.spent) == (0, 0)
