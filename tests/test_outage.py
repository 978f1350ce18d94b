"""Spend incurred while the store was down is never dropped: a call let through (fail open)
records its spend with the same retries, replays and `spend.unrecorded` notification as a
guarded commit. On both stores, through the sync calls and their async twins."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import allotment as al

from support import LLM
from support.drivers import AsyncDriven
from support.outage import Outage

ACME = al.Subject(tenant="acme")


@pytest.fixture
def outage(store: Any) -> Outage:
    return Outage(store)


@pytest.fixture(params=["sync", "async"])
def guard_on(request: pytest.FixtureRequest, outage: Outage) -> Iterator[Any]:
    """A fail-open guard on the switched store, called through sync calls or async twins."""
    guard = al.Guard(outage, on_store_error="allow", commit_retries=2)
    guard.set_budget("tenant:acme", usd=10)
    if request.param == "sync":
        yield guard
        return
    loop = asyncio.new_event_loop()
    yield AsyncDriven(guard, loop)
    loop.close()


def let_through(guard: Any, outage: Outage) -> Any:
    outage.down = 1
    held = guard.reserve(ACME, LLM, al.usd(1))
    assert held.unguarded and held.decision.reason == "STORE_UNAVAILABLE"
    return held


def spent(guard: Any) -> int:
    (balance,) = guard.balances("tenant:acme")
    return int(balance.spent)


def test_spend_of_a_call_let_through_is_retried_until_the_store_answers(
        guard_on: Any, outage: Outage) -> None:
    held = let_through(guard_on, outage)
    outage.down, before = 2, outage.calls
    result = held.commit(al.usd("0.75"))
    assert outage.calls - before == 3  # two failures, then the record landed
    assert result.charged == (al.usd("0.75"),)
    assert spent(guard_on) == al.usd("0.75").amount


def test_spend_of_a_call_let_through_whose_answer_was_lost_is_charged_once(
        guard_on: Any, outage: Outage) -> None:
    held = let_through(guard_on, outage)
    outage.down, outage.lose_answers = 1, True
    result = held.commit(al.usd("0.60"))  # applied, answer lost, retried: a replay
    assert result.charged == (al.usd("0.60"),)
    assert spent(guard_on) == al.usd("0.60").amount
    records = guard_on.audit("acme", types=["event.recorded"])
    assert [r.charged for r in records] == [(al.usd("0.60"),)]


def test_spend_of_a_call_let_through_that_never_lands_reaches_the_sinks(
        guard_on: Any, outage: Outage) -> None:
    unrecorded: list[al.Notification] = []
    guard_on.on("spend.unrecorded", unrecorded.append)
    held = let_through(guard_on, outage)
    outage.down = 3
    with pytest.raises(al.StoreUnavailable, match="3 tries"):
        held.commit(al.usd("0.40"))
    assert [(n.reservation_id, n.amounts) for n in unrecorded] == [
        (held.id, (al.usd("0.40"),))]
    assert spent(guard_on) == 0
